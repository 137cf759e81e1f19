"""Heartbeat and ``peft-studio watch``: dead runs are failed, analyzed and reported exactly once; live ones never.

Real components: sqlite stores and a real ``mlflow server`` (tests/conftest.py), the loopback webhook of
tests/receivers.py, a training process killed with SIGKILL, a real job with a long evaluation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO
from receivers import HTTPReceiver

from tracking.heartbeat import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG
from tracking.watch import CLAIM_PARAM, DEAD_TAG, poll


def _run_with_beat(client, experiment_id: str, beat_age: float | None, interval: float = 1.0, losses: int = 12):
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 2.0 / (1 + i), now_ms, i) for i in range(1, losses + 1)])
    if beat_age is not None:
        client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - beat_age:.1f}")
        client.set_tag(run_id, HEARTBEAT_INTERVAL_TAG, f"{interval:g}")
    return run_id


def _notifier(url: str):
    from notify.delivery import Notifier, load_channels

    return Notifier(load_channels(url))


def _two_watchers_race(client, receiver: HTTPReceiver, ids: list[str]) -> list:
    """Two watchers poll at the same moment, each with its own client and notifier."""
    from mlflow.tracking import MlflowClient

    barrier, results = threading.Barrier(2), []

    def watcher():
        notifier = _notifier(receiver.url())
        own = MlflowClient()
        barrier.wait()
        results.append(poll(own, notifier, ids, limit=2.0))
        notifier.close()

    threads = [threading.Thread(target=watcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _check_reported_once(client, receiver, dead: list[str], alive: list[str], ids) -> None:
    results = _two_watchers_race(client, receiver, ids)
    assert sorted(r for result in results for r in result.reported) == sorted(dead)
    bodies = receiver.wait_for(len(dead), timeout=10)
    time.sleep(0.5)  # a duplicate would arrive now
    assert len(receiver.bodies) == len(dead), receiver.bodies
    assert all("no heartbeat for" in body["message"] for body in receiver.bodies), bodies
    for run_id in dead:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags[DEAD_TAG].startswith("no heartbeat since ")
        assert "quality_score" in run.data.metrics  # the partial analysis
    for run_id in alive:
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and CLAIM_PARAM not in run.data.params
    again = poll(client, _notifier(receiver.url()), ids, limit=2.0)
    assert again.reported == [] and again.silent == []
    time.sleep(0.3)
    assert len(receiver.bodies) == len(dead)


def _race_scenario(client, experiment_id: str):
    """Two dead runs; a beating one (a real heartbeat thread), one whose 30 s silence is half of its own
    interval, and one without a heartbeat (another tool's run, never judged)."""
    from tracking.heartbeat import Heartbeat

    dead = [_run_with_beat(client, experiment_id, beat_age=30) for _ in range(2)]
    beating = _run_with_beat(client, experiment_id, beat_age=None)
    heartbeat = Heartbeat(client, beating, 0.5).start()
    alive = [beating, _run_with_beat(client, experiment_id, beat_age=30, interval=60),
             _run_with_beat(client, experiment_id, beat_age=None)]
    return dead, alive, heartbeat


def _two_watchers_on_the_current_store() -> None:
    """The race of two watchers over one dead and one live run, on whatever store MLFLOW_TRACKING_URI names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = client.create_experiment("watched")
    dead, alive, heartbeat = _race_scenario(client, experiment_id)
    try:
        with HTTPReceiver() as receiver:
            _check_reported_once(client, receiver, dead, alive, [experiment_id])
    finally:
        heartbeat.stop()


def test_two_watchers_report_each_dead_run_once_on_sqlite(tracking_uri):
    _two_watchers_on_the_current_store()


@pytest.mark.slow
def test_two_watchers_report_each_dead_run_once_on_a_remote_server(mlflow_server):
    _two_watchers_on_the_current_store()


def test_watch_refuses_an_unknown_experiment_in_one_line(tracking_uri):
    from click.testing import CliRunner

    from tracking.cli import main

    done = CliRunner().invoke(main, ["watch", "--once", "--experiment", "nope"])
    assert done.exit_code == 2
    assert [line for line in done.stderr.splitlines() if "mlflow.store.db" not in line] == [
        "peft-studio: error: no experiment named 'nope' at this tracking URI; pass an existing --experiment, or "
        "none to watch every experiment"]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_training_process_killed_with_sigkill_is_failed_analyzed_and_reported_once(tracking_uri, tmp_path):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from tracking.cli import main

    job = subprocess.Popen(
        [sys.executable, "-m", "tracking.cli", "train", "--max-steps", "2000", "--batch-size", "4",
         "--max-length", "16", "--logging-steps", "1", "--eval-fraction", "0.05", "--heartbeat-seconds", "1",
         "--stall-minutes", "0", "--output-dir", str(tmp_path / "out")],
        cwd=REPO, env={**os.environ, "MLFLOW_EXPERIMENT_NAME": "killed"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    client = MlflowClient()
    try:
        def run_with_losses():
            experiment = client.get_experiment_by_name("killed")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 6 and runs[0]

        run = _wait_for(run_with_losses, 180, "the job to log 6 losses")
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    run_id = run.info.run_id
    assert HEARTBEAT_TAG in client.get_run(run_id).data.tags
    time.sleep(3.5)  # past the limit (3 s, three of its 1 s beats)
    with HTTPReceiver() as receiver:
        first = CliRunner().invoke(main, ["watch", "--once", "--limit", "3", "--notify", receiver.url()])
        assert first.exit_code == 0, first.output
        receiver.wait_for(1, timeout=10)
        second = CliRunner().invoke(main, ["watch", "--once", "--limit", "3", "--notify", receiver.url()])
        assert second.exit_code == 0, second.output
        time.sleep(0.5)
        assert len(receiver.bodies) == 1, receiver.bodies
        message = receiver.bodies[0]["message"]
    assert "1 reported" in first.output and "0 reported" in second.output
    finished = client.get_run(run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags[DEAD_TAG].startswith("no heartbeat since ")
    assert "quality_score" in finished.data.metrics
    last_step = max(m.step for m in client.get_metric_history(run_id, "loss"))
    assert f"Last logged step: {last_step}" in message and "Last losses: loss " in message
    assert "has sent no heartbeat for" in message


@pytest.mark.slow
def test_a_healthy_run_in_a_long_evaluation_keeps_beating_and_is_never_reported(tracking_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from transformers import Trainer

    from tracking.config import TrainConfig
    from tracking.train import run_training

    seen = []
    evaluate = Trainer.evaluate

    def long_evaluation(self, *args, **kwargs):
        if not seen:  # the first evaluation takes 5 s, past the watcher's 3 s limit; the watcher looks meanwhile
            time.sleep(5)
            client = MlflowClient()
            with HTTPReceiver() as receiver:
                seen.append((poll(client, _notifier(receiver.url()), [e.experiment_id for e in
                                                                      client.search_experiments()], limit=3.0),
                             receiver))
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", long_evaluation)
    result = run_training(TrainConfig(max_steps=2, eval_steps=1, batch_size=4, max_length=16, eval_fraction=0.02,
                                      heartbeat_seconds=1, stall_minutes=0, output_dir=str(tmp_path / "out")))
    [(looked, receiver)] = seen
    assert looked.checked == 1 and looked.silent == [] and receiver.bodies == []
    assert MlflowClient().get_run(result.run_id).info.status == "FINISHED"


def test_system_metrics_are_mlflows_and_memory_near_its_limit_warns_once(tracking_uri, monkeypatch):
    """MLflow's own SystemMetricsMonitor logs system/* metrics; a memory figure over the limit calls
    on_memory (here the limit is lowered to 0% so that any machine is 'near' it)."""
    from mlflow.tracking import MlflowClient

    import tracking.heartbeat as heartbeat

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("system")).info.run_id
    monkeypatch.setattr(heartbeat, "MEMORY_WARN_PERCENT", 0.0)
    warned = []
    guard = heartbeat.RunGuard.start(client, run_id, heartbeat_seconds=1, system_metrics_seconds=1,
                                     on_memory=lambda percent, detail: warned.append((percent, detail)))
    _wait_for(lambda: warned, 30, "a memory sample")
    guard.stop()
    metrics = client.get_run(run_id).data.metrics
    assert "system/system_memory_usage_percentage" in metrics and "system/cpu_utilization_percentage" in metrics
    assert warned[0][0] > 0 and ("memory" in warned[0][1] or "limit" in warned[0][1])
    assert HEARTBEAT_TAG in client.get_run(run_id).data.tags
