"""Analyzing runs that this project did not train: a stock Hugging Face Trainer with MLflowCallback, and
runs with Lightning- or Keras-style metric names built with the MLflow client."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tracking.analyze import AnalysisError, analyze_run


def _log_curves(client: MlflowClient, run_id: str, curves: dict[str, list[tuple[int, float]]]) -> None:
    metrics = [Metric(key, value, 0, step) for key, points in curves.items() for step, value in points]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _decay(n: int, start: float = 2.0, floor: float = 0.4, every: int = 1) -> list[tuple[int, float]]:
    return [(s, floor + (start - floor) * math.exp(-6 * s / n)) for s in range(every, n + 1, every)]


def _lightning_run(client: MlflowClient) -> str:
    run_id = client.create_run(client.create_experiment("lightning")).info.run_id
    _log_curves(client, run_id, {
        "train_loss": _decay(300),
        "val_loss": [(s, v + 0.02) for s, v in _decay(300, every=30)],
        "grad_2.0_norm_total": [(s, 1.0) for s in range(1, 301)],
        "lr-AdamW": [(s, 1e-4) for s in range(1, 301)],
    })
    client.log_param(run_id, "max_epochs", "4")
    return run_id


@pytest.mark.slow
def test_lightning_style_run_is_detected_and_written_back(tracking_uri):
    client = MlflowClient()
    run_id = _lightning_run(client)
    analysis = analyze_run(client, run_id)
    assert analysis.metric_names == {"train_loss": "train_loss", "eval_loss": "val_loss",
                                     "grad_norm": "grad_2.0_norm_total", "learning_rate": "lr-AdamW"}
    assert all(f.measured for f in analysis.factors.values())  # epochs from the max_epochs param
    run = client.get_run(run_id)
    assert run.data.metrics["quality_score"] == analysis.quality_score
    assert run.data.tags["quality.assessment"] == analysis.overall_assessment


@pytest.mark.slow
def test_analyzing_again_replaces_the_results(tracking_uri, tmp_path):
    client = MlflowClient()
    run_id = _lightning_run(client)
    analyze_run(client, run_id)
    second = analyze_run(client, run_id)
    run = client.get_run(run_id)
    assert run.data.metrics["quality_score"] == second.quality_score
    assert sorted(a.path for a in client.list_artifacts(run_id, "quality")) == [
        "quality/analysis.json", "quality/loss_curve.png", "quality/report.md"]
    # the score itself is never read back as a training metric
    assert "quality_score" not in second.metric_names.values()


@pytest.mark.slow
def test_metric_names_can_be_overridden(tracking_uri):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("custom")).info.run_id
    _log_curves(client, run_id, {"objective": _decay(100), "holdout": _decay(100, every=10)})
    analysis = analyze_run(client, run_id, metric_names={"train_loss": "objective", "eval_loss": "holdout"})
    assert analysis.metric_names == {"train_loss": "objective", "eval_loss": "holdout"}
    with pytest.raises(AnalysisError, match="'nope'"):
        analyze_run(client, run_id, metric_names={"train_loss": "nope"})


def test_a_run_without_a_loss_history_gets_a_clear_message_and_nothing_is_written(tracking_uri):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("noloss")).info.run_id
    _log_curves(client, run_id, {"accuracy": [(1, 0.5), (2, 0.6)]})
    with pytest.raises(AnalysisError, match="no training loss curve"):
        analyze_run(client, run_id)
    empty = client.create_run(client.get_experiment_by_name("noloss").experiment_id).info.run_id
    with pytest.raises(AnalysisError, match="no metric history"):
        analyze_run(client, empty)
    for rid in (run_id, empty):
        run = client.get_run(rid)
        assert "quality_score" not in run.data.metrics
        assert not [t for t in run.data.tags if t.startswith("quality.")]
        assert not client.list_artifacts(rid)


@pytest.mark.slow
def test_analyze_command_prints_one_line_errors(tracking_uri):
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "analyze", "0123456789abcdef"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if "mlflow.store.db" not in line]  # MLflow's own db setup log
    assert ours == ["peft-studio: error: run '0123456789abcdef' was not found at this tracking URI: "
                    "Run with id=0123456789abcdef not found"]


@pytest.mark.slow
def test_analyze_command_and_entry_point_on_an_existing_run(tracking_uri, tmp_path):
    client = MlflowClient()
    run_id = _lightning_run(client)
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "analyze", run_id, "--json", "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert 0 <= printed["quality_score"] <= 100
    assert "quality_score" not in client.get_run(run_id).data.metrics  # --dry-run wrote nothing
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "analyze", "--env-manager",
                           "local", "-P", f"run_id={run_id}"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert client.get_run(run_id).data.metrics["quality_score"] == printed["quality_score"]


@pytest.mark.slow
def test_stock_trainer_with_mlflow_callback_is_analyzed(tracking_uri, tmp_path, stock_classifier):
    """A run logged by transformers' own MLflowCallback (report_to='mlflow'), analyzed afterwards."""
    import numpy as np
    from transformers import Trainer, TrainingArguments

    model, dataset = stock_classifier
    mlflow.set_experiment("stock-trainer")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12, logging_steps=1,
                             eval_strategy="steps", eval_steps=4, per_device_train_batch_size=8,
                             learning_rate=5e-5, report_to=["mlflow"], save_strategy="no")
    Trainer(model=model, args=args, train_dataset=dataset[:48], eval_dataset=dataset[48:]).train()
    mlflow.end_run()
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("stock-trainer").experiment_id])[0]
    analysis = analyze_run(client, run.info.run_id)
    assert analysis.metric_names["train_loss"] == "loss"  # not the single end-of-run `train_loss` mean
    assert analysis.metric_names["eval_loss"] == "eval_loss"
    assert analysis.metric_names["grad_norm"] == "grad_norm"
    assert analysis.metrics_summary["total_steps"] == 12
    assert analysis.factors["efficiency"].measured  # epochs from the `epoch` metric
    assert np.isfinite(client.get_run(run.info.run_id).data.metrics["quality_score"])
