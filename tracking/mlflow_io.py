"""Read a run's metric history from MLflow and write a quality analysis back to the run.

Everything goes through an explicit ``MlflowClient`` and run id (no active-run globals), and through
the client's APIs only, so the same code works on a local sqlite store and a remote ``mlflow server``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from array import array
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from scoring import QualityAnalysis
from scoring.report import render_markdown

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
LOSS_CURVE_FILE = "loss_curve.png"
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
        parts.append(_key_frame(key, step, value, timestamp))
    return _history_frame(parts)


def _key_frame(key: str, step: np.ndarray, value: np.ndarray, timestamp: np.ndarray) -> pd.DataFrame:
    """One metric's points ordered by step. Points logged at the same step keep their logging order, so "last
    value wins" means the latest (lexsort is stable)."""
    order = np.lexsort((timestamp, step))
    return pd.DataFrame({"key": key, "step": step[order], "value": value[order], "timestamp": timestamp[order]})


def _history_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=["key", "step", "value", "timestamp"])
    return pd.concat(parts, ignore_index=True)


def store_kind(tracking_uri: str) -> str:
    """How the tracking store keeps metric points: "sql" (a database: drops a point identical to one it has,
    stores +-inf as +-1.797e308), "file" (``file:`` or a folder: keeps every line as written) or "other" (a
    server or Databricks: its backend is unknown from here)."""
    uri = str(tracking_uri)
    if uri.startswith("databricks"):  # also without a colon
        return "other"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme in ("sqlite", "postgresql", "postgres", "mysql", "mssql"):
        return "sql"
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path (a Windows drive letter is one letter)
        return "file"
    return "other"


class LoggedHistory:
    """Every metric point this process sent to a run (key, step, value, timestamp), kept in compact columns
    as it is sent, so that the end of a job can score the run without reading back from MLflow what it
    already holds (reading 40,000 points back from sqlite took about 1.6 s; bench/RESULTS.md B2).

    ``frame`` returns exactly what ``read_history`` would read back, or None wherever what the store keeps
    could differ from what was sent; ``analyze_run`` then reads the run as usual. Only the caller knows
    whether every point reached the run and the run had none from elsewhere (an earlier attempt, another
    process): it passes this history to ``analyze_run`` only then, and ``analyze_run`` checks the run's
    metric names and latest steps against it once more."""

    def __init__(self) -> None:
        self._columns: dict[str, tuple[array, array, array]] = {}  # key -> (steps, values, timestamps)
        self.points = 0

    def add(self, metrics: Mapping[str, float], step: int, timestamp_ms: int) -> None:
        """Points as ``MlflowClient.log_batch`` receives them (float values, int step and timestamp)."""
        for key, value in metrics.items():
            columns = self._columns.get(key)
            if columns is None:
                columns = self._columns[key] = (array("q"), array("d"), array("q"))
            columns[0].append(step)
            columns[1].append(value)
            columns[2].append(timestamp_ms)
        self.points += len(metrics)

    def keys(self) -> set[str]:
        """The metric names, as the run lists them (without the analysis' own)."""
        return {k for k in self._columns if k not in OWN_METRICS}

    def frame(self, kind: str = "sql") -> pd.DataFrame | None:
        """The history ``read_history`` reads back from a store of ``store_kind`` ``kind``; None when the two
        could differ: a value of +-inf (a database keeps +-1.797e308, a file inf) or -0.0; two points of one
        metric at the same step and millisecond with different values (the store's order between them is
        not the logging order); two identical ones where the store is not known to drop the second."""
        parts = []
        for key in sorted(self.keys()):
            steps, values, stamps = self._columns[key]
            step = np.array(steps, dtype=np.int64)
            value = np.array(values, dtype=np.float64)
            timestamp = np.array(stamps, dtype=np.int64)
            if np.isinf(value).any() or ((value == 0) & np.signbit(value)).any():
                return None
            order = np.lexsort((timestamp, step))
            step, value, timestamp = step[order], value[order], timestamp[order]
            same = (step[1:] == step[:-1]) & (timestamp[1:] == timestamp[:-1])
            if same.any():
                a, b = value[:-1][same], value[1:][same]
                if not ((a == b) | (np.isnan(a) & np.isnan(b))).all():
                    return None
                if kind == "sql":  # a database keeps one of identical points (its primary key)
                    keep = np.concatenate(([True], ~same))
                    step, value, timestamp = step[keep], value[keep], timestamp[keep]
                elif kind != "file":
                    return None
            parts.append(_key_frame(key, step, value, timestamp))
        return _history_frame(parts)

    def matches(self, run) -> bool:
        """The run lists the same metrics, each with its latest point at the step and time of the latest one
        sent from here: no other process added points to it."""
        if set(run.data.metrics) - OWN_METRICS != self.keys():
            return False
        for metric in getattr(run.data, "_metric_objs", ()):  # each metric's latest point, as the run lists it
            if metric.key in OWN_METRICS:
                continue
            steps, _, stamps = self._columns[metric.key]
            step, timestamp = np.array(steps, dtype=np.int64), np.array(stamps, dtype=np.int64)
            last = step.max()
            if (int(last), int(timestamp[step == last].max())) != (metric.step, metric.timestamp):
                return False
        return True


def top_suggestion_text(analysis: QualityAnalysis) -> str:
    top = analysis.top_suggestion
    if top is None:
        return "none"
    text = f"[{top.priority.value}] {top.category.value}: {top.change or top.message}"
    return text if len(text) <= TOP_SUGGESTION_CHARS else text[: TOP_SUGGESTION_CHARS - 1] + "…"


def write_analysis(client: MlflowClient, run_id: str, analysis: QualityAnalysis,
                   loss_curve_png: str | Path | None = None, report_sections: Sequence[str] = ()) -> None:
    """Log the analysis to the run. Writing again replaces the tags, artifacts and latest score.
    ``loss_curve_png``: also keep the loss-curve PNG at this path (rendered once, e.g. to attach it to the
    completion message; MLflow's ``log_figure`` writes the same file through ``savefig``)."""
    from mlflow.entities import Metric, RunTag

    from scoring.plot import loss_curve_figure  # matplotlib loads only when a run is analyzed

    data = analysis.to_dict()
    report = render_markdown(analysis, report_sections)  # sections: e.g. the job's model outputs
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
    if analysis.curves is None:
        return
    if loss_curve_png is None:
        client.log_figure(run_id, loss_curve_figure(analysis), f"{ARTIFACT_DIR}/{LOSS_CURVE_FILE}")
        return
    png = Path(loss_curve_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    loss_curve_figure(analysis).savefig(png)
    if png.name == LOSS_CURVE_FILE:
        client.log_artifact(run_id, str(png), ARTIFACT_DIR)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(png, Path(tmp) / LOSS_CURVE_FILE)
            client.log_artifact(run_id, str(Path(tmp) / LOSS_CURVE_FILE), ARTIFACT_DIR)


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
