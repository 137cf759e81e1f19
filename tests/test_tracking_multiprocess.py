"""Several processes: `torchrun --nproc_per_node 2` (gloo on CPU) makes one run, logs once, notifies once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from receivers import HTTPReceiver

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_log_analyze_and_notify_once(tracking_uri, tmp_path):
    with HTTPReceiver() as webhook:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tracking.cli",
                   "train", "--max-steps", "8", "--logging-steps", "1", "--eval-steps", "4",
                   "--notify", webhook.url(), "--output-dir", str(tmp_path / "out")]
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        posts = [p["json"] for p in webhook.wait_for(5, timeout=10)]
    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 9))
    assert len(client.get_metric_history(run_id, "quality_score")) == 1
    assert runs[0].data.metrics["epoch"] == pytest.approx(8 / 34, abs=0.01)  # each process saw half the data
    assert runs[0].data.metrics["loss"] < 2.0  # the loss is not multiplied by the process count
    titles = [p["title"] for p in posts]
    assert titles == ["Training Started", "Training 25% Complete", "Training Halfway There!",
                      "Training 75% Complete", "Training Complete! 🎉"]
    assert done.stdout.count("quality score") == 1
    events = client.download_artifacts(run_id, "notifications/events.jsonl", str(tmp_path))
    assert len(open(events).read().splitlines()) == 5
    assert json.loads(open(events).readline())["event"]["title"] == "Training Started"
