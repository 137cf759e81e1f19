"""The post-run hook: analyze any MLflow run from its logged history and write the results back to it.

It reads histories through the MLflow client, so a run analyzed right after training and a run logged months
ago by another tool go through exactly the same path. The one shortcut: the training job passes the points
it sent itself (``logged``) when they are the run's whole history, and they are used only where they are
exactly what MLflow would give back (``LoggedHistory``); the analysis is the same, without the read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scoring import QualityAnalysis, Thresholds, analyze_history

from .mlflow_io import LoggedHistory, read_history, store_kind, write_analysis


class AnalysisError(ValueError):
    """The run cannot be analyzed (unknown run, no loss history); nothing was written to it."""


def analyze_run(
    client: MlflowClient,
    run_id: str,
    metric_names: Mapping[str, str] | None = None,
    thresholds: Thresholds | None = None,
    write: bool = True,
    logged: LoggedHistory | None = None,
    tracking_uri: str | None = None,
    loss_curve_png: str | Path | None = None,
    report_sections: Sequence[str] = (),
) -> QualityAnalysis:
    """Analyze the run's metric history (read from MLflow, or ``logged`` where that is the same history: every
    point of the run, sent by this process to a store at ``tracking_uri``, the client's by default) and, with
    ``write``, log the results to the run; ``loss_curve_png`` keeps a copy of the logged loss-curve PNG there, and
    ``report_sections`` (markdown) go into its report.md."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise AnalysisError(f"run {run_id!r} was not found at this tracking URI: {exc.message}") from None
    history = None
    if logged is not None and logged.matches(run):
        history = logged.frame(store_kind(tracking_uri or getattr(client, "tracking_uri", "") or ""))
    if history is None:
        history = read_history(client, run_id)
    if history.empty:
        raise AnalysisError(
            f"run {run_id} has no metric history to analyze (it logged no metrics); nothing was written"
        )
    try:
        analysis = analyze_history(history, params=run.data.params, metric_names=metric_names, thresholds=thresholds)
    except ValueError as exc:
        raise AnalysisError(f"run {run_id} cannot be analyzed: {exc}; nothing was written") from None
    if write:
        write_analysis(client, run_id, analysis, loss_curve_png, report_sections)
    return analysis
