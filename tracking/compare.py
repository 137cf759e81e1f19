"""Compare the runs of an experiment: scores, factors, what goes with higher scores, what to try next.

Reads runs with one paged search (scores and factor points are tags written by the analysis, so no
artifact is downloaded per run); runs without an analysis are analyzed first and the results written
back to them. The result is printed and logged to a comparison run of its own, tagged so it is easy to
filter out (``tags.peft_studio.comparison = 'true'``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scoring import FACTOR_NAMES, METRIC_CANDIDATES, ImprovementSuggestion
from scoring.compare import (
    ab_compare,
    comparison_markdown,
    differing_params,
    next_configuration,
    param_effects,
)

from .analyze import AnalysisError, analyze_run
from .mlflow_io import ARTIFACT_DIR, SCORE_METRIC, TAG_POINTS_PREFIX, TAG_SCORE

log = logging.getLogger(__name__)

COMPARISON_TAG = "peft_studio.comparison"
PAGE_SIZE = 1000


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per analyzable run (see scoring.compare for the columns)
    unanalyzable: dict[str, str]
    effects: list = field(default_factory=list)
    next_params: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    ab: object | None = None
    markdown: str = ""
    comparison_run_id: str | None = None

    def table(self) -> str:
        """The terminal table: run, start, score, factors, the params that differ."""
        columns = ["run_id", "start_time", "quality_score", *FACTOR_NAMES,
                   *[f"params.{p}" for p in differing_params(self.runs)]]
        shown = self.runs.sort_values("quality_score", ascending=False)[columns].copy()
        shown["run_id"] = shown["run_id"].str[:8]
        shown["start_time"] = pd.to_datetime(shown["start_time"], unit="ms").dt.strftime("%Y-%m-%d %H:%M")
        shown.columns = [c.removeprefix("params.") for c in shown.columns]
        return shown.to_string(index=False, na_rep="n/a")


class CompareError(ValueError):
    """Nothing to compare (unknown experiment, no runs); the message says what was looked for."""


def _get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise CompareError(f"run {run_id!r} was not found at this tracking URI ({exc.message}); check --run-ids "
                           "and MLFLOW_TRACKING_URI") from None


def _search(client: MlflowClient, experiment: str | None, run_ids: list[str], filter_string: str) -> list:
    if run_ids:
        return [_get_run(client, r) for r in run_ids]
    if not experiment:
        raise CompareError("name an experiment (--experiment) or runs (--run-ids a,b,c)")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"experiment {experiment!r} does not exist at this tracking URI")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], filter_string=filter_string or "",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _needs_analysis(run) -> bool:
    tags = run.data.tags
    return TAG_SCORE not in tags or not all(f"{TAG_POINTS_PREFIX}{f}" in tags for f in FACTOR_NAMES)


def _row(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    points = {f: pd.to_numeric(tags.get(f"{TAG_POINTS_PREFIX}{f}"), errors="coerce") for f in FACTOR_NAMES}
    eval_key = next((k for k in METRIC_CANDIDATES["eval_loss"] if k in metrics), None)
    return {
        "run_id": run.info.run_id,
        "start_time": run.info.start_time,
        "quality_score": metrics.get(SCORE_METRIC, float(tags.get(TAG_SCORE, "nan"))),
        **points,
        "final_eval_loss": metrics[eval_key] if eval_key else np.nan,
        **{f"params.{k}": v for k, v in run.data.params.items()},
    }


def compare_runs(
    client: MlflowClient,
    experiment: str | None = None,
    run_ids: list[str] | None = None,
    filter_string: str = "",
    exclude_run_id: str | None = None,
) -> Comparison:
    run_ids = [r for r in (run_ids or []) if r]
    found = [r for r in _search(client, experiment, run_ids, filter_string)
             if r.data.tags.get(COMPARISON_TAG) != "true" and r.info.run_id != exclude_run_id]
    if not found:
        raise CompareError(f"no runs to compare in {experiment or run_ids!r}"
                           + (f" matching {filter_string!r}" if filter_string else ""))
    unanalyzable: dict[str, str] = {}

    def ready(run):
        if not _needs_analysis(run):
            return run
        try:
            analyze_run(client, run.info.run_id)
            return client.get_run(run.info.run_id)
        except AnalysisError as exc:
            unanalyzable[run.info.run_id] = str(exc)
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        analyzed = [r for r in pool.map(ready, found) if r is not None]
    if not analyzed:
        raise CompareError("none of the runs could be analyzed: " + "; ".join(unanalyzable.values()))
    runs = pd.DataFrame([_row(r) for r in analyzed])
    comparison = Comparison(runs=runs, unanalyzable=unanalyzable, effects=param_effects(runs))
    best = runs.loc[runs["quality_score"].idxmax()]
    worst = runs.loc[runs["quality_score"].idxmin()]
    best_params = {k.removeprefix("params."): v for k, v in best.items()
                   if k.startswith("params.") and isinstance(v, str)}
    comparison.next_params, comparison.changes = next_configuration(
        best_params, _suggestions(client, best["run_id"]))
    if len(run_ids) == 2 and len(runs) == 2:
        by_id = runs.set_index("run_id", drop=False)
        a, b = by_id.loc[run_ids[0]], by_id.loc[run_ids[1]]
        comparison.ab = ab_compare(a, b, _eval_history(client, run_ids[0]), _eval_history(client, run_ids[1]))
    comparison.markdown = comparison_markdown(
        runs, comparison.effects, comparison.next_params, comparison.changes, best["run_id"], worst["run_id"],
        unanalyzable)
    if comparison.ab is not None:
        comparison.markdown += "\n## A/B\n\n" + comparison.ab.summary() + "\n"
    return comparison


def _suggestions(client: MlflowClient, run_id: str) -> list[ImprovementSuggestion]:
    """The best run's suggestions, from its analysis.json (one download)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/analysis.json", tmp)
        except Exception as exc:  # an analysis logged by an older version, or artifacts not reachable
            log.info("no suggestions for run %s: %s", run_id, exc)
            return []
        data = json.loads(Path(path).read_text())
    return [ImprovementSuggestion(s["category"], s["priority"], s["message"], s.get("parameter"),
                                  s.get("current_value"), s.get("suggested_value"))
            for s in data.get("suggestions", [])]


def _history(client: MlflowClient, run_id: str, candidates: tuple[str, ...], metrics=None) -> pd.Series:
    """The step-indexed history of the first of ``candidates`` the run logged (``metrics``: the run's
    latest metrics, when the caller already has them)."""
    metrics = metrics if metrics is not None else client.get_run(run_id).data.metrics
    key = next((k for k in candidates if k in metrics), None)
    if key is None:
        return pd.Series(dtype=float)
    points = client.get_metric_history(run_id, key)
    return pd.Series({m.step: m.value for m in points}, dtype=float).sort_index()


def _eval_history(client: MlflowClient, run_id: str) -> list[float]:
    return _history(client, run_id, METRIC_CANDIDATES["eval_loss"]).tolist()


def trend_figure(runs: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    ordered = runs.sort_values("start_time")
    when = pd.to_datetime(ordered["start_time"], unit="ms")
    ax.plot(when, ordered["quality_score"], "o-", color="tab:blue", markersize=4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("quality score")
    ax.set_title(f"Quality score over time ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return fig


def best_worst_figure(client: MlflowClient, best_id: str, worst_id: str, runs: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    scores = runs.set_index("run_id")["quality_score"]
    for run_id, color, label in ((best_id, "tab:green", "best"), (worst_id, "tab:red", "worst")):
        metrics = client.get_run(run_id).data.metrics
        loss = _history(client, run_id, METRIC_CANDIDATES["train_loss"], metrics)
        ax.plot(loss.index, loss.values, color=color, label=f"{label}: {run_id[:8]} ({scores[run_id]:g}/100)")
        evals = _history(client, run_id, METRIC_CANDIDATES["eval_loss"], metrics)
        if len(evals):
            ax.plot(evals.index, evals.values, "o--", color=color, markersize=3, label=f"{label} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss curves of the best and the worst run")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


NOTE_MAX_CHARS = 8000  # MLflow cuts a run description at this length (and warns)
NOTE_TABLE_ROWS = 20


def _note(markdown: str) -> str:
    """The run description: the whole summary when it fits, else the table cut to the best runs (the whole
    table stays in comparison/summary.md) so that the findings after it are not cut off."""
    if len(markdown) <= NOTE_MAX_CHARS:
        return markdown
    lines, rows = [], 0
    for line in markdown.splitlines():
        if line.startswith("| `"):  # a run's row (header and separator rows have no run id)
            rows += 1
            if rows == NOTE_TABLE_ROWS + 1:
                lines.append("")
                lines.append("(the other runs are in the artifact comparison/summary.md)")
            if rows > NOTE_TABLE_ROWS:
                continue
        lines.append(line)
    return "\n".join(lines)[:NOTE_MAX_CHARS]


def log_comparison(client: MlflowClient, comparison: Comparison, experiment_id: str,
                   run_id: str | None = None) -> str:
    """Log the comparison to ``run_id`` (the run `mlflow run -e compare` made) or to a new run."""
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name="comparison").info.run_id
    client.set_tag(run_id, COMPARISON_TAG, "true")
    client.set_tag(run_id, "mlflow.note.content", _note(comparison.markdown))
    runs = comparison.runs
    client.log_text(run_id, comparison.markdown, "comparison/summary.md")
    client.log_text(run_id, runs.to_csv(index=False), "comparison/runs.csv")
    client.log_figure(run_id, trend_figure(runs), "comparison/score_trend.png")
    best = runs.loc[runs["quality_score"].idxmax(), "run_id"]
    worst = runs.loc[runs["quality_score"].idxmin(), "run_id"]
    client.log_figure(run_id, best_worst_figure(client, best, worst, runs), "comparison/best_worst_loss.png")
    if os.environ.get("MLFLOW_RUN_ID") != run_id:
        client.set_terminated(run_id)
    comparison.comparison_run_id = run_id
    return run_id
