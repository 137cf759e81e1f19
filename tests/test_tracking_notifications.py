"""Notifications from the real training job, delivered to real receivers on 127.0.0.1.

Each test trains the built-in model for a few steps (the first reads the job that tests/conftest.py's
``default_run`` trains once); receivers are a JSON webhook (apprise `json://`) and an
aiosmtpd SMTP server. What is asserted is what a user sees: which messages arrive, once each, with what.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from receivers import PASSWORD as SECRET
from receivers import HTTPReceiver, SMTPReceiver, free_port

from notify.formatting import format_score
from tracking.config import TrainConfig

pytestmark = pytest.mark.slow


def _config(tmp_path, notify: str, **overrides) -> TrainConfig:
    settings = dict(max_steps=8, logging_steps=1, eval_steps=4, output_dir=str(tmp_path / "out"), notify=notify)
    settings.update(overrides)
    return TrainConfig(**settings)


def _train(config: TrainConfig, **notifier_options):
    from notify.delivery import Notifier, load_channels
    from tracking.train import run_training

    channels = load_channels(config.notify)
    return run_training(config, notifier=Notifier(channels, **notifier_options), channel_count=len(channels))


def _events(client: MlflowClient, run_id: str, tmp_path) -> list[dict]:
    path = client.download_artifacts(run_id, "notifications/events.jsonl", str(tmp_path))
    return [json.loads(line) for line in open(path)]


@pytest.mark.xdist_group("default-run")
def test_milestones_completion_and_email_with_the_plot(default_run, tmp_path):
    """The shared job (tests/conftest.py ``default_run``): a webhook for every event, and an email routed to
    completion and errors by an apprise YAML file."""
    posts, mails, result = default_run.posts, default_run.mails, default_run.result

    titles = [p["title"] for p in posts]
    assert titles == ["Training Started", "Training 25% Complete", "Training Halfway There!",
                      "Training 75% Complete", "Training Complete! 🎉"]
    score = result.analysis.quality_score
    assert f"{score:g}/100" in posts[-1]["message"]
    assert posts[-1]["type"] == "success" and posts[1]["type"] == "info"
    assert "Step 2/8" in posts[1]["message"] and "Step 6/8" in posts[3]["message"]

    # email is routed to completion (and errors) only, and carries the loss curve
    assert len(mails) == 1
    assert mails[0]["Subject"].startswith("Training Complete!")
    attachments = [part for part in mails[0].walk() if part.get_content_type() == "image/png"]
    assert attachments and attachments[0].get_payload(decode=True).startswith(b"\x89PNG")

    # the record in the run: every event, each channel's outcome, no secret anywhere
    client = default_run.client
    events = _events(client, result.run_id, tmp_path)
    assert [e["event"]["title"] for e in events] == titles
    assert all(d["ok"] for e in events for d in e["deliveries"])
    for post, event in zip(posts[2:4], events[2:4], strict=True):  # 50 and 75 %: scored by the send helper
        score = event["event"]["details"]["quality_score"]
        assert f"Provisional quality score: {format_score(score)}/100" in post["message"], post["message"]
    run = client.get_run(result.run_id)
    everything = json.dumps(events) + json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert SECRET not in everything
    assert run.data.params["notify"] == "(configured)"
    assert run.data.tags["peft_studio.milestones_sent"] == "25,50,75,100"


def test_broken_channels_never_break_training(tracking_uri, tmp_path):
    """A webhook that hangs, one that answers 500 and a refused port: training finishes and is analyzed."""
    mlflow.set_experiment("faults")
    from notify.delivery import Notifier, load_channels
    from tracking.train import run_training

    with HTTPReceiver() as slow, HTTPReceiver() as failing, SMTPReceiver() as smtp:
        slow.delay = 10.0
        failing.status = 500
        refused = f"json://127.0.0.1:{free_port()}/hook"
        mail = smtp.url("trainer", SECRET, "me@example.com", "bot@example.com")
        config = _config(tmp_path, f"{slow.url()} {failing.url()} {refused} {mail}")
        notifier = Notifier(load_channels(config.notify), send_timeout=1.0, retries=1, backoff=0.1, flush_timeout=5.0)
        # the mail server goes away in the middle of the run, once it has the start and 25% messages
        # (each channel sends on its own thread; apprise spaces emails 5.5 s apart) and before the halfway one
        notifier.add_callback(
            lambda event: (smtp.wait_for(2, timeout=30), smtp.close()) if event.milestone == 50 else None)
        started = time.monotonic()
        result = run_training(config, notifier=notifier, channel_count=4)
        elapsed = time.monotonic() - started
        early_mails = len(smtp.messages)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "quality_score" in run.data.metrics
    events = _events(client, result.run_id, tmp_path)
    by_channel = {}
    for event in events:
        for d in event["deliveries"]:
            by_channel.setdefault(d["channel"].split(":")[0], []).append(d["ok"])
    assert not any(by_channel["json"])  # hanging, failing and refused webhooks: every send failed
    mail_outcomes = by_channel["mailto"]
    assert mail_outcomes[:2] == [True, True] and not any(mail_outcomes[2:])  # start and 25% went, then none
    assert early_mails == 2
    assert elapsed < 300  # bounded: the hanging channel costs at most the flush timeout at the end


def test_a_crash_is_reported_with_its_step_and_the_run_is_marked_failed(tracking_uri, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import tracking.train as train

    class SimulatedOOM(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("CUDA out of memory (simulated)")

    real_build = train.build_trainer
    monkeypatch.setattr(train, "build_trainer",
                        lambda config, data, loaded, callbacks: real_build(config, data, loaded,
                                                                           [*callbacks, SimulatedOOM()]))
    mlflow.set_experiment("crash")
    with HTTPReceiver() as webhook:
        with pytest.raises(RuntimeError, match="out of memory"):
            _train(_config(tmp_path, webhook.url()))
        posts = [p["json"] for p in webhook.wait_for(3, timeout=20)]
    # the job's end sends its last word before progress still queued (on a busy machine the 25% message can
    # still be waiting when step 3 crashes), so the failure is found by its type, not its place
    (error,) = [p for p in posts if p["type"] == "failure"]
    assert error["title"] == "Training Failed"
    assert "RuntimeError" in error["message"] and "out of memory" in error["message"]
    assert "step 3" in error["message"].lower()
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("crash").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert "quality_score" in run.data.metrics  # partial analysis of the history it had
    # the buffered points were flushed before the run closed: every step logged before the crash is there
    # (step 3 crashed in on_step_end, before its log entry)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]


def test_sigterm_is_reported_as_stopped_and_the_run_is_killed_even_when_a_second_one_comes_during_cleanup(
        tracking_uri, tmp_path):
    """A scheduler that sends SIGTERM twice, or a user who presses Ctrl-C twice: the second signal lands while
    the job is cleaning up (held there by a webhook that hangs on the "Training Stopped" message), and the
    run must still end KILLED, not FINISHED through MLflow's exit handler."""
    with HTTPReceiver() as webhook:
        command = [sys.executable, "-m", "tracking.cli", "train", "--max-steps", "400", "--logging-steps", "1",
                   "--eval-fraction", "0", "--notify", webhook.url(), "--output-dir", str(tmp_path / "out")]
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "MLFLOW_EXPERIMENT_NAME": "sigterm"})
        try:
            assert webhook.wait_for(1, timeout=240), "training never started"
            client = MlflowClient()
            deadline = time.monotonic() + 120
            run = None
            while time.monotonic() < deadline:  # wait until steps are being logged
                runs = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
                history = client.get_metric_history(runs[0].info.run_id, "loss") if runs else []
                if len(history) >= 3:
                    run = runs[0]
                    break
                time.sleep(0.5)
            assert run is not None
            webhook.delay = 30.0  # the stop message hangs: the job stays in its cleanup for a while
            process.send_signal(signal.SIGTERM)
            assert len(webhook.wait_for(2, timeout=120)) == 2, "the stop message never came"
            deadline = time.monotonic() + 60  # the partial analysis is written: the job now waits on the webhook
            while "quality_score" not in client.get_run(run.info.run_id).data.metrics:
                assert time.monotonic() < deadline, "no partial analysis"
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        posts = [p["json"] for p in webhook.wait_for(2, timeout=10)]
    assert process.returncode == 130
    assert "the MLflow run is marked KILLED" in stderr and "Traceback" not in stderr
    assert "stopped again while cleaning up" in stderr
    assert posts[-1]["title"] == "Training Stopped"
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    # every step logged before SIGTERM was flushed: one loss point per step, no gap, up to where it stopped
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    stopped_at = int(re.search(r"Step (\d+)", posts[-1]["message"]).group(1))
    assert steps == list(range(1, len(steps) + 1)) and stopped_at - 1 <= steps[-1] <= stopped_at


def test_a_resumed_run_does_not_resend_milestones_and_a_stall_is_warned_once(tracking_uri, tmp_path, monkeypatch):
    mlflow.set_experiment("resume")
    with HTTPReceiver() as webhook:
        # steps take far longer than 0.3 s here, so the watchdog sees a stall; it must warn once, not per step
        first = _train(_config(tmp_path, webhook.url(), stall_minutes=0.005))
        titles = [p["json"]["title"] for p in webhook.wait_for(6, timeout=15)]
        assert titles.count("Training Warning: stall") == 1
        assert {"Training 25% Complete", "Training Complete! 🎉"} <= set(titles)
        mlflow.end_run()

        monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)  # the same MLflow run, trained again
        webhook.received.clear()
        second = _train(_config(tmp_path, webhook.url(), stall_minutes=0.005))  # it stalls again, too
        again = [p["json"]["title"] for p in webhook.wait_for(1, timeout=15)]
    assert second.run_id == first.run_id
    assert again == ["Training Started"]  # no milestone, no stall warning, no completion a second time
    client = MlflowClient()
    tags = client.get_run(first.run_id).data.tags
    assert tags["peft_studio.milestones_sent"] == "25,50,75,100"
    assert tags["peft_studio.warnings_sent"] == "stall"


def test_a_stop_that_lands_in_a_finalizer_is_recognised_so_it_can_be_sent_again():
    """Python swallows an exception raised inside ``__del__`` or a weakref callback ("Exception ignored"):
    the SIGTERM handler must see that it is there (CI once lost a second stop that way)."""
    import sys

    from tracking.train import _in_finalizer

    seen = []

    class Dying:
        def __del__(self):
            seen.append(_in_finalizer(sys._getframe()))

    Dying()
    assert seen == [True]
    assert not _in_finalizer(sys._getframe())
