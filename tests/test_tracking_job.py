"""The training job end to end: `mlflow run .` on the built-in model and data, and the causal-LM task.

These train for a handful of steps on the CPU; they check what a user checks afterwards in MLflow.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest import QUICK_START_SETTINGS
from mlflow.tracking import MlflowClient
from PIL import Image

pytestmark = pytest.mark.slow

# the quick start job's settings (conftest runs it), also those of the causal-LM job here
MAX_STEPS, LOGGING_STEPS, EVAL_STEPS = (QUICK_START_SETTINGS[key]
                                        for key in ("max_steps", "logging_steps", "eval_steps"))


def _only_run(client: MlflowClient):
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"expected exactly one run, found {len(runs)}"
    return runs[0]


def _assert_analyzed(client: MlflowClient, run, tmp_path):
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "loss")) == MAX_STEPS // LOGGING_STEPS
    assert len(client.get_metric_history(run_id, "grad_norm")) == MAX_STEPS // LOGGING_STEPS
    assert len(client.get_metric_history(run_id, "eval_loss")) == MAX_STEPS // EVAL_STEPS
    assert {"learning_rate", "epoch"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id, "quality")}
    assert artifacts == {"quality/analysis.json", "quality/report.md", "quality/loss_curve.png"}
    local = client.download_artifacts(run_id, "quality", str(tmp_path))
    analysis = json.loads(open(f"{local}/analysis.json").read())
    assert analysis["schema_version"]
    assert run.data.metrics["quality_score"] == analysis["quality_score"]
    assert run.data.tags["quality.score"] == f"{analysis['quality_score']:g}"
    assert run.data.tags["quality.assessment"] == analysis["overall_assessment"]
    assert run.data.tags["quality.top_suggestion"]
    assert run.data.tags["mlflow.note.content"].startswith("# Training quality")
    with Image.open(f"{local}/loss_curve.png") as image:
        image.verify()
        assert image.format == "PNG"
    return analysis


@pytest.mark.xdist_group("quick-start")
def test_mlflow_run_trains_logs_and_writes_the_analysis(quick_start_run, tmp_path):
    """The README's quick start job (conftest's ``quick_start_run``: `mlflow run .` with max_steps=8,
    logging_steps=1, eval_steps=4), as MLflow holds it afterwards."""
    client = MlflowClient(quick_start_run.uri)
    run = _only_run(client)  # the job logged into the run `mlflow run` made: never a second one
    assert run.data.params["max_steps"] == str(MAX_STEPS)
    assert run.data.params["lora_r"] == "8"
    assert run.data.params["train_examples"] == "1080"
    analysis = _assert_analyzed(client, run, tmp_path)
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert f"quality score {analysis['quality_score']:g}/100" in quick_start_run.done.stdout


def test_causal_lm_task_on_a_local_model(tracking_uri, tmp_path, tiny_causal_lm):
    from tracking.config import TrainConfig
    from tracking.train import run_training

    data = tmp_path / "notes.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"note {i}: the cache warms up in {i % 7} seconds"})
                              for i in range(60)))
    mlflow.set_experiment("causal")
    config = TrainConfig(model=str(tiny_causal_lm), data=str(data), task="causal-lm", max_steps=MAX_STEPS,
                         logging_steps=LOGGING_STEPS, eval_steps=EVAL_STEPS, batch_size=8, learning_rate=5e-3,
                         target_modules="auto", output_dir=str(tmp_path / "out"))
    result = run_training(config)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    _assert_analyzed(client, run, tmp_path)
    assert run.data.params["task"] == "causal-lm"


def test_the_same_seed_gives_the_same_run(tracking_uri, tmp_path):
    from tracking.config import TrainConfig
    from tracking.train import run_training

    mlflow.set_experiment("seeded")
    config = TrainConfig(max_steps=3, logging_steps=1, eval_fraction=0, batch_size=8, output_dir=str(tmp_path / "o"))
    client = MlflowClient(tracking_uri)
    losses = []
    for _ in range(2):
        run_id = run_training(config).run_id
        losses.append([m.value for m in client.get_metric_history(run_id, "loss")])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_a_run_too_short_to_score_still_finishes(tracking_uri, tmp_path):
    from tracking.config import TrainConfig
    from tracking.train import run_training

    mlflow.set_experiment("short")
    config = TrainConfig(max_steps=1, logging_steps=5, eval_fraction=0, batch_size=8, output_dir=str(tmp_path / "o"))
    result = run_training(config)  # one step: no loss curve to analyze
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert result.analysis is None
    assert run.info.status == "FINISHED"
    assert "quality_score" not in run.data.metrics
