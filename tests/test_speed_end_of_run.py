"""The end of a training job scores the points it sent itself instead of reading them back from MLflow
(bench/RESULTS.md B2), and that analysis must be exactly the one `peft-studio analyze RUN_ID` computes.

What MLflow gives back is not always what was sent: a database drops a point identical to one it has and
keeps +-inf as +-1.797e308; the order of two points at the same step and millisecond is the store's; an
earlier attempt or another process may have logged to the run. The job then reads the history back."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import tracking.analyze
from scoring.report import render_markdown
from tracking.analyze import analyze_run
from tracking.mlflow_io import LoggedHistory, read_history, store_kind
from tracking.train import JobRunLogger, own_history


def assert_same_analysis(ours, theirs) -> None:
    """Field by field (repr, so NaN equals NaN and floats are compared exactly), then as a whole."""
    for name in ("quality_score", "overall_assessment", "factors", "verdicts", "suggestions", "metrics_summary",
                 "events", "metric_names", "top_concern"):
        assert repr(getattr(ours, name)) == repr(getattr(theirs, name)), name
    assert ours.to_dict() == theirs.to_dict()
    assert render_markdown(ours) == render_markdown(theirs)
    for role in ("train_loss", "eval_loss", "grad_norm", "learning_rate", "epoch"):
        a, b = getattr(ours.curves, role), getattr(theirs.curves, role)
        assert (a is None) == (b is None), role
        if a is not None:
            pd.testing.assert_series_equal(a, b, check_exact=True)


@pytest.fixture
def reads(monkeypatch):
    """How many times analyze_run read a history back from MLflow."""
    calls = []
    original = tracking.analyze.read_history
    monkeypatch.setattr(tracking.analyze, "read_history", lambda *a: calls.append(a) or original(*a))
    return calls


def _new_run(client: MlflowClient) -> str:
    experiment = client.create_experiment("speed")
    return client.create_run(experiment).info.run_id


def _log_awkward_history(logger: JobRunLogger) -> None:
    """A run as a Trainer logs it, with what makes a store's copy differ: NaN, a repeated step (a later
    value wins), an epoch logged twice at one step in one millisecond (identical: a database keeps one),
    steps logged out of order, an eval every 5 steps, and the analysis' own metric."""
    ts = 1_700_000_000_000
    for step in range(1, 41):
        loss = math.nan if step == 17 else 2.0 * math.exp(-step / 12) + 0.3 + 0.01 * (step % 3)
        logger.log_metrics({"loss": loss, "grad_norm": 1.0 + (step % 4) / 10, "learning_rate": 1e-3 * (1 - step / 40),
                            "epoch": step / 20}, step, timestamp_ms=ts + 10 * step)
        if step % 5 == 0:
            logger.log_metrics({"eval_loss": 2.1 * math.exp(-step / 15) + 0.35, "epoch": step / 20}, step,
                               timestamp_ms=ts + 10 * step)  # same step and millisecond as the loss entry
    logger.log_metrics({"loss": 0.31}, 40, timestamp_ms=ts + 1000)  # step 40 again, later: this value wins
    logger.log_metrics({"grad_norm": 1.05}, 3, timestamp_ms=ts + 1001)  # an old step, logged late
    logger.log_metrics({"train_loss": 0.9, "train_runtime": 12.5, "epoch": 2.0}, 40, timestamp_ms=ts + 1002)
    logger.log_metrics({"quality_score": 12.0}, 0, timestamp_ms=ts + 1003)  # never part of the history read


def _logger(client, run_id, tmp_path) -> JobRunLogger:
    return JobRunLogger(client, run_id, unsent_path=tmp_path / "unsent.jsonl", retry_delays=(0.01,))


def test_store_kinds():
    assert store_kind("sqlite:////tmp/mlflow.db") == "sql"
    assert store_kind("postgresql+psycopg2://u@h/db") == "sql"
    assert store_kind("mysql://h/db") == "sql"
    assert store_kind("file:///tmp/mlruns") == "file"
    assert store_kind("/tmp/mlruns") == "file"
    assert store_kind("mlruns") == "file"
    assert store_kind("http://127.0.0.1:5000") == "other"
    assert store_kind("databricks") == "other"


def test_sent_points_are_what_sqlite_gives_back_and_score_the_same(tracking_uri, tmp_path, reads):
    client = MlflowClient()
    run_id = _new_run(client)
    logger = _logger(client, run_id, tmp_path)
    _log_awkward_history(logger)
    assert logger.flush(timeout=60)
    logged = own_history(logger, None, fresh_run=True)
    assert logged is not None
    pd.testing.assert_frame_equal(logged.frame(store_kind(tracking_uri)), read_history(client, run_id),
                                  check_exact=True)
    reads.clear()
    ours = analyze_run(client, run_id, logged=logged, write=False)
    assert reads == []  # scored from the points this process sent
    theirs = analyze_run(client, run_id, write=False)  # what `peft-studio analyze RUN_ID` computes
    assert len(reads) == 1
    assert_same_analysis(ours, theirs)
    assert ours.metric_names["train_loss"] == "loss" and ours.metrics_summary["logged_points"] > 0
    logger.close()


def test_a_file_store_keeps_identical_points_and_the_sent_history_does_too(tmp_path, monkeypatch, reads):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    run_id = _new_run(client)
    logger = _logger(client, run_id, tmp_path)
    _log_awkward_history(logger)
    assert logger.flush(timeout=60)
    logged = own_history(logger, None, fresh_run=True)
    pd.testing.assert_frame_equal(logged.frame("file"), read_history(client, run_id), check_exact=True)
    assert len(logged.frame("file")) > len(logged.frame("sql"))  # the identical epoch points, kept
    reads.clear()
    ours = analyze_run(client, run_id, logged=logged, write=False, tracking_uri=uri)
    assert reads == []
    assert_same_analysis(ours, analyze_run(client, run_id, write=False))
    logger.close()


@pytest.mark.parametrize("case", ["inf", "negative zero", "same millisecond, different values"])
def test_points_a_store_may_change_are_read_back(tracking_uri, tmp_path, reads, case):
    client = MlflowClient()
    run_id = _new_run(client)
    logger = _logger(client, run_id, tmp_path)
    for step in range(1, 21):
        logger.log_metrics({"loss": 2.0 / step + 0.2, "grad_norm": 1.0}, step, timestamp_ms=1_000 + step)
    if case == "inf":
        logger.log_metrics({"grad_norm": math.inf}, 21, timestamp_ms=2_000)  # sqlite keeps 1.797e308
    elif case == "negative zero":
        logger.log_metrics({"grad_norm": -0.0}, 21, timestamp_ms=2_000)
    else:  # the store orders these two by value, not in the order they were logged
        logger.log_metrics({"loss": 0.5}, 21, timestamp_ms=2_000)
        logger.log_metrics({"loss": 0.4}, 21, timestamp_ms=2_000)
    assert logger.flush(timeout=60)
    logged = own_history(logger, None, fresh_run=True)
    assert logged is not None and logged.frame("sql") is None
    reads.clear()
    ours = analyze_run(client, run_id, logged=logged, write=False)
    assert len(reads) == 1  # read back, as the fallback
    assert_same_analysis(ours, analyze_run(client, run_id, write=False))
    logger.close()


@pytest.mark.parametrize("elsewhere", ["a later point of a metric", "another metric"])
def test_points_logged_by_someone_else_are_noticed(tracking_uri, tmp_path, reads, elsewhere):
    client = MlflowClient()
    run_id = _new_run(client)
    logger = _logger(client, run_id, tmp_path)
    for step in range(1, 21):
        logger.log_metrics({"loss": 2.0 / step + 0.2}, step)
    assert logger.flush(timeout=60)
    if elsewhere == "another metric":
        MlflowClient().log_metric(run_id, "eval_loss", 0.7, step=10)
    else:
        MlflowClient().log_metric(run_id, "loss", 9.0, step=25)
    logged = own_history(logger, None, fresh_run=True)
    assert not logged.matches(client.get_run(run_id))
    reads.clear()
    ours = analyze_run(client, run_id, logged=logged, write=False)
    assert len(reads) == 1
    assert_same_analysis(ours, analyze_run(client, run_id, write=False))
    logger.close()


class _FlakyClient:
    """An MlflowClient whose first log_batch fails (the store was briefly away)."""

    def __init__(self, client):
        self.client, self.failed = client, False

    def log_batch(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise ConnectionError("store away")
        return self.client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_the_sent_points_are_not_used_unless_they_are_the_whole_run(tracking_uri, tmp_path):
    client = MlflowClient()
    run_id = _new_run(client)
    logger = _logger(client, run_id, tmp_path)
    logger.log_metrics({"loss": 1.0}, 1)
    logger.log_metrics({"loss": 0.5}, 2)
    assert logger.flush(timeout=60)
    assert own_history(logger, None, fresh_run=True) is not None
    assert own_history(logger, None, fresh_run=False) is None  # the run had points before this attempt

    class Resumed:
        class manager:  # noqa: N801 - stands in for the monitor's NotificationManager
            start_step = 100

    assert own_history(logger, Resumed(), fresh_run=True) is None  # resumed from a checkpoint
    logger.close()

    flaky = _logger(_FlakyClient(client), _new_run_in(client, "flaky"), tmp_path / "flaky")
    flaky.log_metrics({"loss": 1.0}, 1)
    flaky.log_metrics({"loss": 0.5}, 2)
    assert flaky.flush(timeout=60)
    assert flaky.failures == 1 and own_history(flaky, None, fresh_run=True) is None  # a retried batch
    flaky.close()


def _new_run_in(client: MlflowClient, experiment: str) -> str:
    return client.create_run(client.create_experiment(experiment)).info.run_id


def test_logged_history_keeps_what_log_batch_receives():
    history = LoggedHistory()
    history.add({"loss": 1.5, "epoch": 0.5}, 3, 1000)
    history.add({"loss": 1.25}, 4, 1001)
    assert history.points == 3 and history.keys() == {"loss", "epoch"}
    frame = history.frame("sql")
    assert list(frame.columns) == ["key", "step", "value", "timestamp"]
    assert frame.to_dict("records") == [
        {"key": "epoch", "step": 3, "value": 0.5, "timestamp": 1000},
        {"key": "loss", "step": 3, "value": 1.5, "timestamp": 1000},
        {"key": "loss", "step": 4, "value": 1.25, "timestamp": 1001},
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("default-run")
def test_the_job_scores_what_it_sent_exactly_as_analyze_does(default_run, tmp_path, reads):
    """The shared job of tests/conftest.py (``default_run``: 8 steps, an evaluation every 4), which counts
    the history reads of its end the way the ``reads`` fixture does."""
    result = default_run.result
    assert default_run.history_reads == []  # the job did not read its history back
    client = default_run.client
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "loss")) == 8
    assert len(client.get_metric_history(result.run_id, "eval_loss")) == 2
    fresh = analyze_run(client, result.run_id, write=False)  # `peft-studio analyze RUN_ID`
    assert len(reads) == 1  # this one did: the counter counts
    assert_same_analysis(result.analysis, fresh)
    assert run.data.metrics["quality_score"] == fresh.quality_score
    assert {a.path for a in client.list_artifacts(result.run_id, "quality")} == {
        "quality/analysis.json", "quality/report.md", "quality/loss_curve.png"}
    assert (default_run.root / "out" / "loss_curve.png").read_bytes() == (
        __import__("pathlib").Path(client.download_artifacts(result.run_id, "quality/loss_curve.png",
                                                             str(tmp_path / "dl"))).read_bytes())


@pytest.mark.slow
def test_a_rerun_of_a_run_with_points_reads_the_history_back(tracking_uri, tmp_path, reads):
    """`mlflow run` with MLFLOW_RUN_ID of a run that has points from an earlier attempt: the job never saw
    them, so it must score what MLflow holds."""
    from tracking.config import TrainConfig
    from tracking.train import run_training

    mlflow.set_experiment("speed-rerun")
    earlier = mlflow.start_run()
    client = MlflowClient()
    for step in range(1, 5):  # the earlier attempt's points, at steps the new attempt logs again
        client.log_metric(earlier.info.run_id, "loss", 3.0 - step / 10, step=step)
    config = TrainConfig(max_steps=4, logging_steps=1, eval_fraction=0, batch_size=8, output_dir=str(tmp_path / "o"))
    result = run_training(config)
    assert result.run_id == earlier.info.run_id
    assert len(reads) == 1
    assert_same_analysis(result.analysis, analyze_run(client, result.run_id, write=False))
