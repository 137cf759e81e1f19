"""Tracking store faults: an `mlflow server` killed mid-run (restarted, or gone for good) and four training
processes writing to one sqlite store at once. Every logged point must end up in its run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from receivers import HTTPReceiver

from tracking.run_logger import RunLogger

pytestmark = pytest.mark.slow  # every test here trains a model or starts a server

REPO = Path(__file__).resolve().parent.parent
KEYS = ("loss", "grad_norm", "learning_rate", "epoch")


def _train_command(tmp_path: Path, steps: int, notify: str = "", name: str = "out") -> list[str]:
    return [sys.executable, "-m", "tracking.cli", "train", "--max-steps", str(steps), "--logging-steps", "1",
            "--eval-fraction", "0", "--batch-size", "8", "--max-length", "32", "--notify", notify,
            "--output-dir", str(tmp_path / name)]


def _wait_for_points(client: MlflowClient, experiment: str, at_least: int, timeout: float = 240):
    """The run once its loss history has ``at_least`` points (the job's logging thread is sending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= at_least:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no run of {experiment!r} reached {at_least} loss points in {timeout:.0f} s")


def _assert_complete_history(client: MlflowClient, run_id: str, steps: int) -> None:
    """One point per step for every logged key (the Trainer's closing summary adds a second epoch point)."""
    for key in KEYS:
        logged = [m.step for m in client.get_metric_history(run_id, key)]
        if key == "epoch":
            logged = sorted(set(logged))
        assert logged == list(range(1, steps + 1)), key


def test_a_server_killed_and_restarted_loses_no_point_of_the_logger(restartable_mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = restartable_mlflow_server
    run_id = MlflowClient().create_run("0").info.run_id  # the default experiment of this server's store
    troubles = []
    logger = RunLogger(MlflowClient(), run_id, unsent_path=tmp_path / "u.jsonl", flush_interval=0.05,
                       retry_delays=(0.5,), on_trouble=troubles.append)
    logged = []
    for step in range(1, 3001):
        value = 1.0 / step
        logger.log_metrics({"loss": value}, step, timestamp_ms=1_700_000_000_000 + step)
        logged.append((step, value))
        if step == 1000:
            assert logger.flush(timeout=30)
            server.kill()
        if step == 2000:
            server.start()
    report = logger.close(timeout=60)
    assert report.complete, report
    assert troubles  # the outage was noticed (and would have been notified)
    history = MlflowClient().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == logged


def _train_and_kill_the_server(server, tmp_path, experiment: str, steps: int, restart: bool, **env_extra):
    """Run the job against ``server`` and SIGKILL the server once the run has 3 loss points (starting it again
    at once when ``restart``). Returns the exit code, stderr, the run, the webhook's messages and the seconds
    from the kill to the job's exit."""
    env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": experiment, "OMP_NUM_THREADS": "1", **env_extra}
    with HTTPReceiver() as webhook:
        process = subprocess.Popen(_train_command(tmp_path, steps, webhook.url()), cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run = _wait_for_points(MlflowClient(), experiment, 3)
            server.kill()
            killed = time.monotonic()
            if restart:
                server.start()  # takes a few seconds (tens on a loaded machine) while training goes on
            _, err = process.communicate(timeout=600)
            ended_after = time.monotonic() - killed
        finally:
            if process.poll() is None:
                process.kill()
        return process.returncode, err, run, webhook.bodies, ended_after


def test_training_goes_on_through_a_server_restart_and_the_run_has_every_point(restartable_mlflow_server, tmp_path):
    steps = 60
    returncode, err, run, posts, _ = _train_and_kill_the_server(restartable_mlflow_server, tmp_path, "restart",
                                                                steps, restart=True)
    titles = [p["title"] for p in posts]
    assert returncode == 0, err[-3000:]
    client = MlflowClient()
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    _assert_complete_history(client, run.info.run_id, steps)
    assert "quality_score" in finished.data.metrics
    assert "Training Complete! 🎉" in titles
    assert not list((tmp_path / "out").glob("unsent-*.jsonl"))


def test_a_server_that_never_comes_back_leaves_a_file_that_upload_sends_later(restartable_mlflow_server, tmp_path):
    server = restartable_mlflow_server
    steps = 30
    # PEFT_STUDIO_STORE_PATIENCE: how long the job's end waits for a store that stopped answering
    returncode, err, run, posts, ended_after = _train_and_kill_the_server(
        server, tmp_path, "gone", steps, restart=False, PEFT_STUDIO_STORE_PATIENCE="4")
    assert returncode == 3, err[-3000:]
    assert "Traceback" not in err
    unsent = tmp_path / "out" / f"unsent-mlflow-{run.info.run_id}.jsonl"
    assert unsent.is_file()
    assert f"peft-studio upload {unsent}" in err
    record = next(p for p in posts if p["title"] == "MLflow Record Incomplete")
    assert record["type"] == "failure" and str(unsent) in record["message"]
    assert "Training Complete! 🎉" in [p["title"] for p in posts]  # training itself finished
    assert ended_after < 240  # bounded: no waiting on MLflow's own minutes of retries

    server.start()
    upload = subprocess.run([sys.executable, "-m", "tracking.cli", "upload", str(unsent)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert upload.returncode == 0, upload.stderr[-3000:]
    assert "is now FINISHED" in upload.stdout and "quality score" in upload.stdout
    client = MlflowClient()
    uploaded = client.get_run(run.info.run_id)
    assert uploaded.info.status == "FINISHED"
    _assert_complete_history(client, run.info.run_id, steps)
    assert uploaded.data.tags["peft_studio.milestones_sent"] == "25,50,75,100"


def test_four_training_processes_share_one_sqlite_store_without_losing_a_point(tracking_uri, tmp_path):
    steps = 12
    env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": "four-at-once", "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(_train_command(tmp_path, steps, name=f"out{i}") + ["--seed", str(i)],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
    results = [process.communicate(timeout=900) for process in processes]
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 0, err[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("four-at-once").experiment_id])
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        _assert_complete_history(client, run.info.run_id, steps)
        assert "quality_score" in run.data.metrics
