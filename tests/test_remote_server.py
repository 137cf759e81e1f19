"""The whole flow against a real `mlflow server` on 127.0.0.1 with artifacts served through it."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from receivers import HTTPReceiver

from tracking.analyze import analyze_run
from tracking.compare import compare_runs, log_comparison
from tracking.config import TrainConfig

pytestmark = pytest.mark.slow


def test_train_notify_analyze_and_compare_through_a_server(mlflow_server, tmp_path):
    import mlflow

    from notify.delivery import Notifier, load_channels
    from tracking.train import run_training

    mlflow.set_experiment("remote")
    with HTTPReceiver() as webhook:
        config = TrainConfig(max_steps=6, logging_steps=1, eval_steps=3, output_dir=str(tmp_path / "out"),
                             notify=webhook.url())
        result = run_training(config, notifier=Notifier(load_channels(config.notify)), channel_count=1)
        posts = [p["json"] for p in webhook.wait_for(5, timeout=20)]
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["quality_score"] == result.analysis.quality_score
    assert {a.path for a in client.list_artifacts(result.run_id, "quality")} == {
        "quality/analysis.json", "quality/report.md", "quality/loss_curve.png"}
    # the run's page on the server is where the messages point
    url = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{result.run_id}"
    assert url in posts[0]["message"] and url in posts[-1]["message"]
    comparison = compare_runs(client, "remote")
    log_comparison(client, comparison, run.info.experiment_id)
    events = client.download_artifacts(result.run_id, "notifications/events.jsonl", str(tmp_path))
    assert len(open(events).read().splitlines()) == 5


def test_a_history_longer_than_one_page_is_read_whole(mlflow_server):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("long")).info.run_id
    steps = 50_001  # MLflow pages a metric history by 25,000 points: two whole pages and a last one of one point
    started = time.monotonic()
    for start in range(0, steps, 1000):
        client.log_batch(run_id, metrics=[Metric("loss", 2.0 / (1 + s / 1000), 0, s + 1)
                                          for s in range(start, min(start + 1000, steps))])
    logged = time.monotonic() - started
    started = time.monotonic()
    analysis = analyze_run(client, run_id)
    print(f"logged {steps:,} points in {logged:.1f} s; analyzed in {time.monotonic() - started:.1f} s")
    assert analysis.metrics_summary["logged_points"] == steps
    assert analysis.metrics_summary["total_steps"] == steps
    stored = json.loads(client.get_run(run_id).data.tags["quality.score"])
    assert stored == analysis.quality_score


def test_a_postgres_backed_server_stores_the_analysis(postgres_mlflow_server):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("pg")).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", 2.0 / (1 + s / 20), 0, s) for s in range(1, 201)]
                     + [Metric("eval_loss", 2.1 / (1 + s / 20), 0, s) for s in range(20, 201, 20)])
    analysis = analyze_run(client, run_id)
    run = client.get_run(run_id)
    assert run.data.metrics["quality_score"] == analysis.quality_score
    assert run.data.tags["quality.points.overfitting"] == f"{analysis.factors['overfitting'].points:g}"
    assert {a.path for a in client.list_artifacts(run_id, "quality")} == {
        "quality/analysis.json", "quality/report.md", "quality/loss_curve.png"}
