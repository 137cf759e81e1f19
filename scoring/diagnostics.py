"""Rules that read a metric history: endpoints, plateau, instability, overfitting.

Each function takes step-indexed ``pandas.Series`` (sorted, unique steps) and returns a small frozen
record of what it found, with the numbers the report quotes. The rules and their sources are in
``diagnostics.md`` section 2; thresholds come from ``Thresholds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .thresholds import Thresholds
from .trend import Trend, mann_kendall


@dataclass(frozen=True)
class Endpoints:
    initial_raw: float
    final_raw: float
    initial: float  # smoothed: mean of the first `window` finite points
    final: float  # smoothed: mean of the last `window` finite points
    window: int
    first_step: int
    last_step: int


@dataclass(frozen=True)
class ConvergenceFinding:
    measured: bool
    converged: bool | None = None
    change: float | None = None  # relative change of the loss over the final window (negative: fell)
    window_start_step: int | None = None
    plateau_start_step: int | None = None
    trend: Trend | None = None
    reason: str = ""


@dataclass(frozen=True)
class StabilityFinding:
    measured: bool
    stable: bool | None = None
    nonfinite_loss_steps: tuple[int, ...] = ()
    nonfinite_grad_steps: tuple[int, ...] = ()
    breakdown_steps: tuple[int, ...] = ()  # loss logged as exactly 0.0 next to a non-finite gradient norm
    divergence_step: int | None = None
    loss_spike_steps: tuple[int, ...] = ()
    grad_spike_steps: tuple[int, ...] = ()
    grad_norm_p90: float | None = None
    clipped_fraction: float | None = None
    first_problem_step: int | None = None

    @property
    def spike_count(self) -> int:
        return len(self.loss_spike_steps) + len(self.grad_spike_steps)


@dataclass(frozen=True)
class GeneralizationFinding:
    measured: bool
    eval_loss: float | None = None
    train_loss: float | None = None
    eval_step: int | None = None
    gap: float | None = None
    best_step: int | None = None
    best_eval_loss: float | None = None
    generalization_loss: float | None = None  # Prechelt's GL, percent
    eval_points: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Findings:
    """Everything the rules found in one history; the scoring step turns it into points and advice."""

    endpoints: Endpoints
    convergence: ConvergenceFinding
    stability: StabilityFinding
    generalization: GeneralizationFinding
    total_steps: int
    points: int


def _finite(series: pd.Series) -> pd.Series:
    return series[np.isfinite(series.to_numpy(dtype=float))]


def window_size(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def endpoints(loss: pd.Series, thresholds: Thresholds) -> Endpoints:
    finite = _finite(loss)
    if len(finite) < 2:
        raise ValueError(
            f"the training loss history has {len(finite)} finite point(s); at least 2 are needed to measure "
            "a reduction (log the loss more often, e.g. a smaller `logging_steps`)"
        )
    k = window_size(len(finite), thresholds.endpoint_window)
    values = finite.to_numpy(dtype=float)
    return Endpoints(
        initial_raw=float(values[0]),
        final_raw=float(values[-1]),
        initial=float(values[:k].mean()),
        final=float(values[-k:].mean()),
        window=k,
        first_step=int(finite.index[0]),
        last_step=int(finite.index[-1]),
    )


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Trailing rolling mean, so a smoothed point never looks ahead."""
    return values.rolling(window, min_periods=1).mean()


def plateau_start(loss: pd.Series, thresholds: Thresholds) -> int | None:
    """First step after which the smoothed loss stays within `plateau_tolerance` of its final value."""
    finite = _finite(loss)
    if len(finite) < thresholds.min_points_for_trend:
        return None
    curve = smoothed(finite, window_size(len(finite), thresholds.endpoint_window) * 2)
    final = float(curve.iloc[-1])
    band = abs(final) * thresholds.plateau_tolerance
    outside = np.abs(curve.to_numpy() - final) > band
    if not outside.any():
        return int(curve.index[0])
    last_outside = int(np.flatnonzero(outside)[-1])
    if last_outside + 1 >= len(curve):
        return None
    return int(curve.index[last_outside + 1])


def convergence(loss: pd.Series, thresholds: Thresholds) -> ConvergenceFinding:
    finite = _finite(loss)
    n = len(finite)
    if n < thresholds.min_points_for_trend:
        return ConvergenceFinding(
            measured=False,
            reason=f"only {n} finite loss point(s) were logged; at least {thresholds.min_points_for_trend} "
            "are needed to judge convergence",
        )
    m = max(thresholds.min_points_for_trend, int(math.ceil(n * thresholds.convergence_window)))
    window = finite.iloc[-m:]
    values = window.to_numpy(dtype=float)
    trend = mann_kendall(values, alpha=thresholds.trend_alpha)
    level = float(np.median(values))
    # Sen's slope is per binned point; spread it over the whole window to get the total change.
    change = trend.slope * (trend.n - 1) / abs(level) if level != 0 else 0.0
    practically_flat = abs(change) < thresholds.convergence_min_improvement
    # On a short window the trend test has no power ("not significant" would mean nothing), so only a
    # practically flat curve counts as converged there.
    testable = m >= thresholds.min_points_for_trend_test
    converged = practically_flat or (testable and not trend.significant)
    flat_from = plateau_start(finite, thresholds) if converged else None
    if flat_from is not None and flat_from >= int(window.index[0]):
        flat_from = None  # flat only inside the final window: no earlier plateau worth pointing at
    return ConvergenceFinding(
        measured=True,
        converged=converged,
        change=float(change),
        window_start_step=int(window.index[0]),
        plateau_start_step=flat_from,
        trend=trend if testable else None,
    )


def _spikes(series: pd.Series, thresholds: Thresholds) -> tuple[int, ...]:
    """Points far above the trailing window: rolling z-score and a minimum ratio to the trailing mean."""
    finite = _finite(series)
    w = thresholds.spike_window
    if len(finite) <= w:
        return ()
    previous = finite.shift(1).rolling(w, min_periods=w)
    mean, std = previous.mean(), previous.std()
    values = finite
    # A perfectly flat window has std 0: any jump above it is infinitely unusual, so let the ratio decide.
    z = (values - mean) / std.replace(0, np.finfo(float).tiny)
    spike = (z > thresholds.spike_zscore) & (values > thresholds.spike_min_ratio * mean.abs())
    return tuple(int(s) for s in finite.index[spike.fillna(False).to_numpy()])


def _divergence_step(loss: pd.Series, thresholds: Thresholds) -> int | None:
    """First step where the smoothed loss stays above `divergence_factor` x its running minimum."""
    finite = _finite(loss)
    if len(finite) < thresholds.min_points_for_trend:
        return None
    curve = smoothed(finite, max(3, window_size(len(finite), thresholds.endpoint_window)))
    start = int(len(curve) * thresholds.warmup_fraction)
    running_min = curve.cummin()
    above = (curve > thresholds.divergence_factor * running_min) & (running_min > 0)
    above.iloc[:start] = False
    run = 0
    for position, flag in enumerate(above.to_numpy()):
        run = run + 1 if flag else 0
        if run >= thresholds.divergence_patience:
            return int(curve.index[position - run + 1])
    return None


def _nonfinite_steps(series: pd.Series | None) -> tuple[int, ...]:
    if series is None:
        return ()
    return tuple(int(s) for s in series.index[~np.isfinite(series.to_numpy(dtype=float))])


def stability(
    loss: pd.Series,
    grad_norm: pd.Series | None,
    thresholds: Thresholds,
    max_grad_norm: float | None = None,
) -> StabilityFinding:
    nonfinite_loss = _nonfinite_steps(loss)
    nonfinite_grad = _nonfinite_steps(grad_norm)
    breakdown = tuple(s for s in nonfinite_grad if s in loss.index and loss.loc[s] == 0.0)
    divergence = _divergence_step(loss, thresholds)
    loss_spikes = _spikes(loss, thresholds)
    grad_spikes = _spikes(grad_norm, thresholds) if grad_norm is not None else ()
    grad_p90 = clipped = None
    if grad_norm is not None and len(_finite(grad_norm)):
        finite_grad = _finite(grad_norm).to_numpy(dtype=float)
        grad_p90 = float(np.percentile(finite_grad, 90))
        if max_grad_norm is not None and max_grad_norm > 0:
            clipped = float(np.mean(finite_grad > max_grad_norm))
    failed = bool(nonfinite_loss or nonfinite_grad or divergence is not None
                  or len(loss_spikes) + len(grad_spikes) >= thresholds.spike_limit)
    problem_steps = [*nonfinite_loss, *nonfinite_grad, *loss_spikes, *grad_spikes]
    if divergence is not None:
        problem_steps.append(divergence)
    # Without a gradient norm only a visible failure in the loss is evidence; a clean loss proves nothing.
    measured = grad_norm is not None or failed
    return StabilityFinding(
        measured=measured,
        stable=(not failed) if measured else None,
        nonfinite_loss_steps=nonfinite_loss,
        nonfinite_grad_steps=nonfinite_grad,
        breakdown_steps=breakdown,
        divergence_step=divergence,
        loss_spike_steps=loss_spikes,
        grad_spike_steps=grad_spikes,
        grad_norm_p90=grad_p90,
        clipped_fraction=clipped,
        first_problem_step=min(problem_steps) if problem_steps else None,
    )


def generalization(loss: pd.Series, eval_loss: pd.Series | None, thresholds: Thresholds) -> GeneralizationFinding:
    """Gap between the last eval loss and the training loss logged up to the same step, and Prechelt's GL."""
    if eval_loss is None or not len(_finite(eval_loss)):
        return GeneralizationFinding(measured=False, reason="no eval loss was logged")
    evals = _finite(eval_loss)
    eval_step = int(evals.index[-1])
    last_eval = float(evals.iloc[-1])
    train = _finite(loss)
    before = train[train.index <= eval_step]
    if not len(before):
        before = train.iloc[:1]
    k = window_size(len(train), thresholds.endpoint_window)
    train_near = float(before.iloc[-k:].mean())
    best_step = int(evals.idxmin())
    best = float(evals.min())
    gl = 100.0 * (last_eval / best - 1.0) if best > 0 else None
    if train_near <= 0:
        return GeneralizationFinding(
            measured=False, eval_loss=last_eval, eval_step=eval_step, best_step=best_step, best_eval_loss=best,
            generalization_loss=gl, eval_points=len(evals),
            reason=f"the training loss near step {eval_step} is {train_near:.4g}, so a relative gap is undefined",
        )
    return GeneralizationFinding(
        measured=True,
        eval_loss=last_eval,
        train_loss=train_near,
        eval_step=eval_step,
        gap=(last_eval - train_near) / train_near,
        best_step=best_step,
        best_eval_loss=best,
        generalization_loss=gl,
        eval_points=len(evals),
    )


@np.errstate(over="ignore", invalid="ignore")  # values near float max overflow to inf/NaN: the rules handle both
def diagnose(curves, thresholds: Thresholds, max_grad_norm: float | None = None) -> Findings:
    """Run every rule on one set of curves (a ``curves.Curves``)."""
    loss = curves.train_loss
    found_stability = stability(loss, curves.grad_norm, thresholds, max_grad_norm=max_grad_norm)
    if found_stability.breakdown_steps:
        # A 0.0 loss beside a NaN gradient norm is numerical breakdown, not a perfect fit: read it as NaN so
        # the endpoints and the plateau test see only the losses the model really reached.
        loss = loss.copy()
        loss.loc[list(found_stability.breakdown_steps)] = np.nan
    ends = endpoints(loss, thresholds)
    return Findings(
        endpoints=ends,
        convergence=convergence(loss, thresholds),
        stability=found_stability,
        generalization=generalization(loss, curves.eval_loss, thresholds),
        total_steps=max(ends.last_step, int(loss.index[-1])),
        points=len(loss),
    )
