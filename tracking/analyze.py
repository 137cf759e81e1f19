"""The post-run hook: analyze any MLflow run from its logged history and write the results back to it.

It reads histories through the MLflow client (never from the trainer's memory), so a run analyzed right
after training and a run logged months ago by another tool go through exactly the same path.
"""

from __future__ import annotations

from typing import Mapping

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scoring import QualityAnalysis, Thresholds, analyze_history

from .mlflow_io import read_history, write_analysis


class AnalysisError(ValueError):
    """The run cannot be analyzed (unknown run, no loss history); nothing was written to it."""


def analyze_run(
    client: MlflowClient,
    run_id: str,
    metric_names: Mapping[str, str] | None = None,
    thresholds: Thresholds | None = None,
    write: bool = True,
) -> QualityAnalysis:
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise AnalysisError(f"run {run_id!r} was not found at this tracking URI: {exc.message}") from None
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
        write_analysis(client, run_id, analysis)
    return analysis
