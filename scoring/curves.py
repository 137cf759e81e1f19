"""Turn a metric history into the step-indexed curves the rules read, finding the metric names itself.

A history is a DataFrame with columns ``key, step, value`` (one row per logged point, as MLflow's
``get_metric_history`` gives them, whatever library logged them). Names follow the conventions of
docs/scoring.md ("Metric names") and can be overridden per role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

# For each role, the names tried in order. A train-loss candidate must have at least two points, which
# skips Hugging Face's single end-of-run `train_loss` mean when the per-step `loss` curve is there.
METRIC_CANDIDATES: dict[str, tuple[str, ...]] = {
    "train_loss": ("loss", "train_loss", "train_loss_step", "train/loss", "training_loss", "train_loss_epoch"),
    "eval_loss": ("eval_loss", "val_loss", "val_loss_epoch", "validation_loss", "eval/loss", "val_loss_step",
                  "valid_loss", "test_loss"),
    "grad_norm": ("grad_norm", "grad_2.0_norm_total", "train/grad_norm", "gradient_norm", "grad_norm_total"),
    "learning_rate": ("learning_rate", "lr", "train/learning_rate", "lr-AdamW", "lr-Adam", "lr-SGD"),
    "epoch": ("epoch", "train/epoch"),
}
ROLES = tuple(METRIC_CANDIDATES)
REQUIRED_COLUMNS = ("key", "step", "value")


@dataclass(frozen=True)
class Curves:
    """The series one analysis reads, each indexed by step (sorted, one value per step)."""

    train_loss: pd.Series
    eval_loss: pd.Series | None = None
    grad_norm: pd.Series | None = None
    learning_rate: pd.Series | None = None
    epoch: pd.Series | None = None

    @classmethod
    def from_values(
        cls,
        loss: tuple[float, ...],
        eval_loss: tuple[float, ...] = (),
        grad_norm: tuple[float, ...] = (),
        total_steps: int | None = None,
    ) -> Curves:
        """Curves from bare value lists (the scalar API): points are spread evenly over the run's steps."""
        # Never fewer steps than points, so every point keeps a step of its own.
        last = max(total_steps or 0, len(loss), len(eval_loss), len(grad_norm), 1)

        def spread(values: tuple[float, ...]) -> pd.Series | None:
            if not values:
                return None
            steps = np.linspace(last / len(values), last, len(values)).round().astype(int)
            return _one_value_per_step(pd.Series(values, index=steps, dtype=float))

        return cls(train_loss=spread(loss), eval_loss=spread(eval_loss), grad_norm=spread(grad_norm))


def _one_value_per_step(series: pd.Series) -> pd.Series:
    """Sort by step (stable) and keep the last value logged for a repeated step."""
    series = series.sort_index(kind="mergesort")
    series = series[~series.index.duplicated(keep="last")]
    series.index = series.index.astype(int)
    return series


def _validate(history: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(history, pd.DataFrame):
        raise ValueError(
            f"history must be a pandas DataFrame with columns key, step, value; got {type(history).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(
            f"history is missing column(s) {', '.join(missing)}; it needs key, step, value "
            "(one row per logged point, as MlflowClient.get_metric_history returns them)"
        )
    if history.empty:
        raise ValueError("history is empty: no metric was logged for this run")
    frame = history.copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    steps = pd.to_numeric(frame["step"], errors="coerce")
    if steps.isna().any():
        raise ValueError("history has a step that is not a number; steps must be integers")
    frame["step"] = steps.astype("int64")
    frame["key"] = frame["key"].astype(str)
    return frame


def detect_metric_names(keys: Mapping[str, int], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each role to the metric it uses. ``keys`` maps metric name -> number of points."""
    overrides = dict(overrides or {})
    unknown_roles = set(overrides) - set(ROLES)
    if unknown_roles:
        raise ValueError(
            f"unknown metric role(s) {', '.join(sorted(unknown_roles))}; the roles are {', '.join(ROLES)}"
        )
    chosen: dict[str, str] = {}
    for role, candidates in METRIC_CANDIDATES.items():
        if role in overrides:
            name = overrides[role]
            if name not in keys:
                raise ValueError(
                    f"metric {name!r} given for {role} is not in this run; logged metrics: {', '.join(sorted(keys))}"
                )
            chosen[role] = name
            continue
        min_points = 2 if role == "train_loss" else 1
        for name in candidates:
            if keys.get(name, 0) >= min_points:
                chosen[role] = name
                break
    if "train_loss" not in chosen:
        raise ValueError(
            "no training loss curve found (looked for "
            f"{', '.join(METRIC_CANDIDATES['train_loss'])} with at least 2 points); logged metrics: "
            f"{', '.join(sorted(keys)) or 'none'}. Name yours with metric_names={{'train_loss': '...'}} "
            "(--train-loss on the command line)"
        )
    return chosen


def curves_from_history(
    history: pd.DataFrame, metric_names: Mapping[str, str] | None = None
) -> tuple[Curves, dict[str, str]]:
    """The curves of a history and the metric name used for each role."""
    frame = _validate(history)
    counts = frame.groupby("key").size().to_dict()
    chosen = detect_metric_names(counts, metric_names)
    series = {
        role: _one_value_per_step(
            frame.loc[frame["key"] == name].set_index("step")["value"].rename(name)
        )
        for role, name in chosen.items()
    }
    return Curves(**series), chosen
