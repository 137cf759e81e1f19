"""Read a run's metric history from MLflow and write a quality analysis back to the run.

Everything goes through an explicit ``MlflowClient`` and run id (no active-run globals), and through
the client's APIs only, so the same code works on a local sqlite store and a remote ``mlflow server``.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from scoring import QualityAnalysis

# What an analysis writes to a run; these never count as training metrics when the run is analyzed again.
SCORE_METRIC = "quality_score"
TAG_SCORE = "quality.score"
TAG_ASSESSMENT = "quality.assessment"
TAG_TOP_SUGGESTION = "quality.top_suggestion"
TAG_SCHEMA = "quality.schema_version"
TAG_POINTS_PREFIX = "quality.points."
TAG_CONCERN = "quality.top_concern"
TAG_VERDICT_PREFIX = "quality.verdict."  # e.g. quality.verdict.overfit = "yes (high confidence)"
NOTE_TAG = "mlflow.note.content"
ARTIFACT_DIR = "quality"
OWN_METRICS = frozenset({SCORE_METRIC})
TOP_SUGGESTION_CHARS = 120


def read_history(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """Every logged point of every metric of the run, as a DataFrame (key, step, value, timestamp)."""
    run = client.get_run(run_id)
    keys = sorted(k for k in run.data.metrics if k not in OWN_METRICS)

    def fetch(key):
        return client.get_metric_history(run_id, key)

    if str(getattr(client, "tracking_uri", "")).startswith(("http://", "https://", "databricks")):
        # A server: requests in flight together overlap the server's work, the client's parsing and the
        # network's round trips (on a local server with 100,000 steps, a read took 0.7-1.0x the time of
        # fetching one key after another; bench/RESULTS.md B3).
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(keys)))) as pool:
            histories = list(pool.map(fetch, keys))
    else:
        # A local store (sqlite, files) is Python work under the GIL: threads only contend (1.10x the time
        # of one key after another on sqlite with 25,000 steps, bench/RESULTS.md B3).
        histories = [fetch(key) for key in keys]
    # Built column-wise per key (numpy), not from one tuple per point: on a 100,000-step run with four
    # metrics that is about 0.15 s instead of 0.5 s (bench/RESULTS.md B3).
    parts = []
    for key, history in zip(keys, histories):
        if not history:
            continue
        n = len(history)
        step = np.fromiter((m.step for m in history), np.int64, n)
        value = np.fromiter((m.value for m in history), np.float64, n)
        timestamp = np.fromiter((m.timestamp for m in history), np.int64, n)
        # Points logged at the same step keep their logging order, so "last value wins" means the latest
        # (lexsort is stable; keys are already in sorted order).
        order = np.lexsort((timestamp, step))
        parts.append(pd.DataFrame({"key": key, "step": step[order], "value": value[order],
                                   "timestamp": timestamp[order]}))
    if not parts:
        return pd.DataFrame(columns=["key", "step", "value", "timestamp"])
    return pd.concat(parts, ignore_index=True)


def top_suggestion_text(analysis: QualityAnalysis) -> str:
    top = analysis.top_suggestion
    if top is None:
        return "none"
    text = f"[{top.priority.value}] {top.category.value}: {top.change or top.message}"
    return text if len(text) <= TOP_SUGGESTION_CHARS else text[: TOP_SUGGESTION_CHARS - 1] + "…"


def write_analysis(client: MlflowClient, run_id: str, analysis: QualityAnalysis) -> None:
    """Log the analysis to the run. Writing again replaces the tags, artifacts and latest score."""
    from mlflow.entities import Metric, RunTag

    data = analysis.to_dict()
    report = analysis.to_markdown()
    tags = {
        TAG_SCORE: f"{analysis.quality_score:g}",
        TAG_ASSESSMENT: analysis.overall_assessment,
        TAG_TOP_SUGGESTION: top_suggestion_text(analysis),
        TAG_SCHEMA: data["schema_version"],
        NOTE_TAG: report,
        # factor points as tags, so a comparison of many runs reads them in one search, without downloads
        **{f"{TAG_POINTS_PREFIX}{name}": f"{f.points:g}" if f.measured else "n/a"
           for name, f in analysis.factors.items()},
        TAG_CONCERN: analysis.top_concern,
        **{f"{TAG_VERDICT_PREFIX}{name}": f"{v.answer} ({v.confidence} confidence)"
           for name, v in analysis.verdicts.items()},
    }
    client.log_batch(
        run_id,
        metrics=[Metric(SCORE_METRIC, analysis.quality_score, int(time.time() * 1000), 0)],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_text(run_id, json.dumps(data, indent=2, allow_nan=False), f"{ARTIFACT_DIR}/analysis.json")
    client.log_text(run_id, report, f"{ARTIFACT_DIR}/report.md")
    if analysis.curves is not None:
        client.log_figure(run_id, analysis.loss_curve_figure(), f"{ARTIFACT_DIR}/loss_curve.png")


def log_new_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params the run does not have yet. ``mlflow run`` already logged its own, and MLflow refuses
    to change a param, so a value it logged as '1e-3' must not be logged again as '0.001'."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=new[start : start + 100])


def store_setup_lock(tracking_uri: str):
    """Several processes starting on one new sqlite store at once race in MLflow's schema migration (and in
    creating the same experiment); an inter-process lock beside the database file lets one go first.
    A server or other database needs none."""
    import contextlib

    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    database = tracking_uri[len("sqlite:///"):].split("?")[0]
    return FileLock(f"{database}.peft-studio.lock", timeout=600)


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when tracking goes to a server (a local store has no URL)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def check_tracking_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before any work, when the tracking server cannot be reached: MLflow's own client
    retries for minutes first, which would surface only after training."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    from .config import ConfigError

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        shown = re.sub(r"//[^/@]+@", "//***@", tracking_uri)  # never echo credentials in the URI
        raise ConfigError(f"cannot reach the MLflow tracking server at {shown} ({reason}); start it "
                          "(`mlflow server`) or fix MLFLOW_TRACKING_URI") from None
