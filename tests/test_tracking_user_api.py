"""Notifications from users' own code: a callback for any Trainer, a monitor for a plain PyTorch loop,
and `peft-studio notify test`."""

from __future__ import annotations

import math
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient
from receivers import HTTPReceiver, free_port


def test_plain_loop_monitor_sends_milestones_warnings_and_calls_python_callbacks():
    from notify.delivery import Notifier, load_channels
    from tracking.monitor import TrainingMonitor

    with HTTPReceiver() as webhook:
        monitor = TrainingMonitor(Notifier(load_channels(webhook.url())), total_steps=40, provisional_scores=True)
        seen = []
        monitor.register_notification_callback(lambda event: seen.append(event.title))
        monitor.start(model="my-model", data="my-data")
        for step in range(1, 41):
            loss = math.nan if step == 30 else 2.0 * math.exp(-step / 10)
            monitor.log(step, {"loss": loss, "grad_norm": 1.0})
            monitor.step(step)
        monitor.complete()
        monitor.close()
        posts = [p["json"] for p in webhook.wait_for(6, timeout=10)]
    expected = ["Training Started", "Training 25% Complete", "Training Halfway There!",
                "Training Warning: nonfinite", "Training 75% Complete", "Training Complete! 🎉"]
    assert sorted(p["title"] for p in posts) == sorted(expected)
    assert sorted(seen) == sorted(expected)
    warning = next(p for p in posts if p["title"].startswith("Training Warning"))
    assert "step 30" in warning["message"] and warning["type"] == "warning"
    halfway = next(p for p in posts if p["title"] == "Training Halfway There!")
    assert "Provisional quality score: " in halfway["message"]


@pytest.mark.slow
def test_callback_for_a_stock_trainer_analyzes_its_mlflow_run(tracking_uri, tmp_path, stock_classifier):
    from transformers import Trainer, TrainingArguments

    from tracking.callbacks import PeftStudioCallback

    model, dataset = stock_classifier
    mlflow.set_experiment("own-trainer")
    with HTTPReceiver() as webhook:
        callback = PeftStudioCallback(notify=webhook.url())
        args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=8, logging_steps=1,
                                 per_device_train_batch_size=8, report_to=["mlflow"], save_strategy="no")
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
        posts = [p["json"] for p in webhook.wait_for(5, timeout=15)]
    client = MlflowClient()
    run = client.get_run(callback.run_id)
    assert "quality_score" in run.data.metrics
    assert posts[-1]["title"] == "Training Complete! 🎉"
    assert f"{run.data.metrics['quality_score']:g}/100" in posts[-1]["message"]


def test_notify_test_command_reports_each_channel(tmp_path):
    with HTTPReceiver() as good:
        refused = f"json://127.0.0.1:{free_port()}/hook"
        done = subprocess.run([sys.executable, "-m", "tracking.cli", "notify", "test", f"{good.url()} {refused}",
                               "--timeout", "5"], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert good.wait_for(1, timeout=5)[0]["json"]["title"] == "peft-studio test message"
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert lines[0].startswith("ok") and f"127.0.0.1:{good.port}" in lines[0]
    assert lines[1].startswith("FAILED")


def test_notify_test_command_refuses_a_bad_url_in_one_line():
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "notify", "test", "slak://T/B/secretvalue"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "peft-studio: error: notify: 'slak://...' is not a valid apprise URL: unknown service 'slak'; "
        "see 'peft-studio notify test --help'"]
    assert "secretvalue" not in done.stderr + done.stdout


def test_a_jump_over_several_milestones_sends_each_once_in_order():
    from notify.delivery import Notifier, load_channels
    from tracking.monitor import TrainingMonitor

    with HTTPReceiver() as webhook:
        monitor = TrainingMonitor(Notifier(load_channels(webhook.url())), total_steps=100, provisional_scores=False)
        monitor.step(10)
        monitor.step(80)   # crosses 25, 50 and 75 at once
        monitor.step(90)
        monitor.complete()
        monitor.close()
        posts = [p["json"] for p in webhook.wait_for(4, timeout=10)]
    assert [p["title"] for p in posts] == ["Training 25% Complete", "Training Halfway There!",
                                           "Training 75% Complete", "Training Complete! 🎉"]
    assert all("Step 80/100" in p["message"] for p in posts[:3])
