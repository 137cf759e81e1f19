"""The rules that read a training curve: one module for the post-run analysis and the live warnings.

Every rule measures a change against the curve's own noise and scale, so nothing fires on batch-to-batch
wobble or on relative changes of a loss that is already near zero. Each finding carries a confidence
(high / medium / low) from how many points it rests on and how far it is from its threshold. The rules,
their thresholds and their published sources are described in ``docs/scoring.md``.

``diagnose`` runs every rule on a run's curves after the fact; ``LiveRules`` applies the same spike,
eval-rise and non-finite rules one log entry at a time while a run trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pymannkendall
from scipy import stats

from .thresholds import Thresholds

HIGH, MEDIUM, LOW = "high", "medium", "low"
MAX_SMOOTHING = 101  # points in a rolling median at most: enough to smooth batch noise, cheap on long runs
IQR_TO_SD = 1.349  # the interquartile range of normal data is 1.349 standard deviations


# --- building blocks ----------------------------------------------------------------------------------


def finite(series: pd.Series) -> pd.Series:
    return series[np.isfinite(series.to_numpy(dtype=float))]


def window_size(n: int, fraction: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * fraction)))


def noise_sd(values: np.ndarray) -> float:
    """Point-to-point noise of a curve: the robust spread of its first differences, per point.

    For white noise of standard deviation s the differences have spread s*sqrt(2); the median absolute
    deviation ignores the trend (the differences' median) and the odd outlier.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return 0.0
    return float(stats.median_abs_deviation(np.diff(values), scale="normal") / math.sqrt(2))


def endpoint_window(n: int, thresholds: Thresholds) -> int:
    """Points taken for the initial and final loss: about 5% of the run, at least 3, at most half of it."""
    return max(1, min(window_size(n, thresholds.endpoint_window, minimum=3), n // 2))


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Trailing rolling median, so a smoothed point never looks ahead and one outlier never moves it."""
    return values.rolling(window, min_periods=1).median()


def _confidence(points: int, margin: float, *, many: int, few: int) -> str:
    """``margin`` is how many times over its threshold the deciding number is (or under it, inverted)."""
    if points < few:
        return LOW
    if points >= many and margin >= 2:
        return HIGH
    return MEDIUM if margin >= 1.25 or points >= many else LOW


# --- endpoints and "did it learn" --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    initial_raw: float
    final_raw: float
    initial: float  # the first finite point, or the median of the first few when it is an outlier
    final: float  # robust: median of the last `window` finite points
    window: int
    first_step: int
    last_step: int
    noise: float  # point-to-point noise of the whole finite curve


def endpoints(loss: pd.Series, thresholds: Thresholds) -> Endpoints:
    values_series = finite(loss)
    if len(values_series) < 2:
        raise ValueError(
            f"the training loss history has {len(values_series)} finite point(s); at least 2 are needed to measure "
            "a reduction (log the loss more often, e.g. a smaller `logging_steps`)"
        )
    values = values_series.to_numpy(dtype=float)
    k = endpoint_window(len(values), thresholds)
    noise = noise_sd(values)
    initial = initial_loss(values, thresholds)
    return Endpoints(
        initial_raw=float(values[0]),
        final_raw=float(values[-1]),
        initial=initial,
        final=float(np.median(values[-k:])),
        window=k,
        first_step=int(values_series.index[0]),
        last_step=int(values_series.index[-1]),
        noise=noise,
    )


def initial_loss(values: np.ndarray, thresholds: Thresholds) -> float:
    """The start is the first log (the Trainer averages it over the first logging steps), unless it is a
    first-log outlier: far above the next few logs. A loss that falls fast right away is not an outlier."""
    initial = float(values[0])
    following = values[1: 1 + thresholds.initial_points]
    if len(following) and initial > thresholds.first_log_outlier * max(float(np.median(following)), 0.0):
        initial = float(np.median(values[: 1 + thresholds.initial_points]))
    return initial


@dataclass(frozen=True)
class LearningFinding:
    learned: bool
    confidence: str
    reason: str  # why it did not learn, or how much it learned, in plain words
    kind: str = ""  # constant | no_drop | collapsed | chance | broken_end (empty when it learned)
    chance_loss: float | None = None


def chance_loss(classes: float | None) -> float | None:
    """Cross-entropy of guessing uniformly among K classes (ln K), when K is known and at least 2."""
    if classes is None or not math.isfinite(classes) or classes < 2:
        return None
    return math.log(classes)


def learning(loss: pd.Series, ends: Endpoints, thresholds: Thresholds, classes: float | None = None,
             broken_at_end: bool = False) -> LearningFinding:
    """Did the model learn at all? A constant or all-zero loss, no drop beyond the noise, a collapse after a
    blow-up, a final loss at chance level, or a run that ended broken (non-finite) is "did not learn"."""
    values = finite(loss).to_numpy(dtype=float)
    n = len(values)
    if broken_at_end:
        return LearningFinding(False, HIGH, "the run ended in numerical breakdown (its last logged losses are "
                               "NaN/inf or 0.0 beside a NaN gradient norm), so the final weights are unusable",
                               "broken_end")
    spread = float(np.ptp(values))
    if spread <= 1e-9 * max(1.0, abs(float(np.mean(values)))):
        what = "0.0" if np.all(values == 0) else f"{values[0]:.4g}"
        return LearningFinding(False, HIGH if n >= 5 else MEDIUM,
                               f"the logged loss is {what} at every one of its {n} points: nothing was learned, "
                               "or the loss is not being computed (check the labels and the loss function)",
                               "constant")
    drop = ends.initial - ends.final
    needed = max(thresholds.learned_noise_multiple * ends.noise, thresholds.learned_min_drop * abs(ends.initial))
    chance = chance_loss(classes)
    if chance is not None and ends.final >= (1 - thresholds.chance_margin) * chance:
        near = ends.final / chance
        return LearningFinding(False, HIGH if n >= 8 and near >= 0.97 else MEDIUM,
                               f"the final loss {ends.final:.4g} is at chance level for {int(classes)} classes "
                               f"(ln {int(classes)} = {chance:.4g}): the model predicts no better than a uniform "
                               "guess", "chance", chance)
    if drop <= needed:
        after_start = values[1 + thresholds.initial_points:]
        peak = float(smoothed(pd.Series(after_start), max(3, ends.window)).max()) if len(after_start) else -math.inf
        if peak > ends.initial + max(3 * ends.noise, 0.5 * abs(ends.initial)):
            return LearningFinding(False, MEDIUM if n < 8 else HIGH,
                                   f"the loss blew up to about {peak:.4g} and ended at {ends.final:.4g}, no lower "
                                   f"than where it started ({ends.initial:.4g}): training collapsed", "collapsed",
                                   chance)
        return LearningFinding(False, _confidence(n, needed / max(abs(drop), 1e-12), many=20, few=8),
                               f"the loss went from {ends.initial:.4g} to {ends.final:.4g}, a change within its "
                               f"noise (needs a fall of more than {needed:.3g})", "no_drop", chance)
    return LearningFinding(True, _confidence(n, drop / needed if needed > 0 else math.inf, many=20, few=8),
                           f"the loss fell from {ends.initial:.4g} to {ends.final:.4g}, more than its noise "
                           f"({needed:.3g})", "", chance)


# --- convergence -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """Mann-Kendall (Hamed-Rao corrected) on the final window, and the Theil-Sen change over it."""

    z: float
    p_value: float
    significant: bool
    n: int


@dataclass(frozen=True)
class ConvergenceFinding:
    measured: bool
    converged: bool | None = None
    change: float | None = None  # relative change of the loss over the final window (negative: fell)
    window_start_step: int | None = None
    plateau_start_step: int | None = None
    trend: Trend | None = None
    material: float | None = None  # the smallest change that counts, relative to the level
    confidence: str = LOW
    reason: str = ""


def bin_means(values: np.ndarray, max_points: int) -> np.ndarray:
    """Averages of consecutive chunks, so a long window costs O(max_points^2) and batch noise is smoothed."""
    if len(values) <= max_points:
        return values
    return np.array([chunk.mean() for chunk in np.array_split(values, max_points)])


def trend_test(values: np.ndarray, alpha: float) -> Trend:
    x = bin_means(np.asarray(values, dtype=float), 100)
    if len(x) < 4 or np.ptp(x) == 0:
        return Trend(0.0, 1.0, False, len(x))
    result = pymannkendall.hamed_rao_modification_test(x, alpha=alpha)
    z, p = float(result.z), float(result.p)
    if not math.isfinite(z) or not math.isfinite(p):
        return Trend(0.0, 1.0, False, len(x))
    return Trend(z, p, bool(result.h), len(x))


def plateau_start(loss: pd.Series, thresholds: Thresholds) -> int | None:
    """First step after which the smoothed loss stays within its noise (or `plateau_tolerance`) of the end."""
    values = finite(loss)
    if len(values) < thresholds.min_points_for_trend:
        return None
    w = min(endpoint_window(len(values), thresholds) * 2, MAX_SMOOTHING)
    curve = smoothed(values, w)
    final = float(curve.iloc[-1])
    band = max(abs(final) * thresholds.plateau_tolerance, 2 * noise_sd(values.to_numpy()) / math.sqrt(w))
    outside = np.abs(curve.to_numpy() - final) > band
    if not outside.any():
        return int(curve.index[0])
    last_outside = int(np.flatnonzero(outside)[-1])
    if last_outside + 1 >= len(curve):
        return None
    return int(curve.index[last_outside + 1])


def convergence(loss: pd.Series, ends: Endpoints, thresholds: Thresholds) -> ConvergenceFinding:
    """Has the training loss stopped improving? A trend over the final window must be both statistically
    significant (Mann-Kendall, Hamed-Rao corrected) and material (beyond its noise, a few percent of the loss
    level, and a small share of the whole run's fall, so a loss already near zero is not "still falling")
    to count as "still moving"."""
    values = finite(loss)
    n = len(values)
    if n < thresholds.min_points_for_trend:
        return ConvergenceFinding(
            measured=False,
            reason=f"only {n} finite loss point(s) were logged; at least {thresholds.min_points_for_trend} are "
            "needed to tell whether the loss had stopped falling",
        )
    m = min(n, max(thresholds.min_window_points, int(math.ceil(n * thresholds.convergence_window))))
    window = values.iloc[-m:]
    x = window.index.to_numpy(dtype=float)
    y = window.to_numpy(dtype=float)
    # Theil-Sen takes every pair of points: on at most 100 bin means it stays cheap on a 100,000-step run.
    slope = float(stats.theilslopes(bin_means(y, 100), bin_means(x, 100)).slope) if np.ptp(x) > 0 else 0.0
    level = abs(float(np.median(y))) or 1.0
    change = slope * float(np.ptp(x)) / level
    # The change over the window is an estimate: with m points of noise s its standard error is about
    # s * sqrt(12 / m). It must clear twice that (and s itself), and matter against the loss level.
    noise = max(noise_sd(y), ends.noise if m < thresholds.min_points_for_trend_test else 0.0)
    total_fall = abs(ends.initial - ends.final)
    material = max(noise * max(1.0, 2 * math.sqrt(12 / m)), thresholds.convergence_min_change * level,
                   thresholds.convergence_share_of_fall * total_fall) / level
    trend = trend_test(y, thresholds.trend_alpha)
    testable = m >= thresholds.min_points_for_trend_test
    moving = abs(change) > material and (trend.significant or not testable)
    ratio = abs(change) / material if material > 0 else math.inf
    confidence = _confidence(m, ratio if moving else (1 / ratio if ratio > 0 else math.inf), many=20, few=8)
    if not testable:
        confidence = LOW if confidence == LOW or m < 6 else MEDIUM
    flat_from = plateau_start(values, thresholds) if not moving else None
    if flat_from is not None and flat_from >= int(window.index[0]):
        flat_from = None  # flat only inside the final window: no earlier plateau worth pointing at
    return ConvergenceFinding(
        measured=True,
        converged=not moving,
        change=float(change),
        window_start_step=int(window.index[0]),
        plateau_start_step=flat_from,
        trend=trend if testable else None,
        material=float(material),
        confidence=confidence,
    )


# --- stability -----------------------------------------------------------------------------------------


def spike_mask(values: np.ndarray, window: int, zscore: float, min_rise: float) -> np.ndarray:
    """Points far above the `window` points before them: a robust z-score (the window's median, and its
    interquartile range / 1.349 as the spread) above `zscore`, and a rise above the window's median of more
    than `min_rise` (the curve's scale).

    ``values`` are finite (non-finite points are a rule of their own). The live warnings call this on the
    last window plus the new point, so both agree on what a spike is.
    """
    values = np.asarray(values, dtype=float)
    if len(values) <= window:
        return np.zeros(len(values), dtype=bool)
    half = values * 0.5  # see is_spike: halves cannot overflow where a median sums two points
    previous = pd.Series(half).shift(1).rolling(window, min_periods=window)
    centre = previous.median().to_numpy()
    spread = (previous.quantile(0.75) - previous.quantile(0.25)).to_numpy() / IQR_TO_SD
    rise = half - centre
    with np.errstate(invalid="ignore", over="ignore"):
        return (rise > zscore * np.maximum(spread, 0.5e-12)) & (rise > 0.5 * min_rise)


def is_spike(previous: np.ndarray, value: float, zscore: float, min_rise: float) -> bool:
    """``spike_mask``'s test for one new point after exactly `window` finite ones, in numpy: the live
    warnings call it on every logged loss, where a pandas rolling window would cost the training loop about
    half a millisecond a step. Same median, same linear-interpolated quartiles, so the same answer.

    Both compare halves of the values: the median of an even window sums two points, which overflows to
    -inf for losses near -9e307 and made a steady curve a "spike"; halving is exact, so nothing else changes."""
    half = np.asarray(previous, dtype=float) * 0.5
    centre = float(np.median(half))
    q1, q3 = np.quantile(half, (0.25, 0.75))
    rise = value * 0.5 - centre
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(rise > zscore * max((q3 - q1) / IQR_TO_SD, 0.5e-12) and rise > 0.5 * min_rise)


def spike_floor(initial: float, thresholds: Thresholds) -> float:
    """The smallest rise that can be a spike: a share of the curve's own starting level."""
    return thresholds.spike_min_rise * abs(initial) if initial else 0.0


@dataclass(frozen=True)
class StabilityFinding:
    measured: bool
    stable: bool | None = None
    nonfinite_loss_steps: tuple[int, ...] = ()
    nonfinite_grad_steps: tuple[int, ...] = ()
    skipped_steps: tuple[int, ...] = ()  # non-finite gradient norm with a healthy loss: fp16 skipped a step
    breakdown_steps: tuple[int, ...] = ()  # loss logged as exactly 0.0 next to a non-finite gradient norm
    divergence_step: int | None = None
    loss_spike_steps: tuple[int, ...] = ()
    grad_spike_steps: tuple[int, ...] = ()
    spike_limit: int = 0
    grad_norm_p90: float | None = None
    clipped_fraction: float | None = None
    first_problem_step: int | None = None
    confidence: str = LOW

    @property
    def spike_count(self) -> int:
        return len(self.loss_spike_steps) + len(self.grad_spike_steps)


def _nonfinite_steps(series: pd.Series | None) -> tuple[int, ...]:
    if series is None:
        return ()
    return tuple(int(s) for s in series.index[~np.isfinite(series.to_numpy(dtype=float))])


def divergence_step(loss: pd.Series, ends: Endpoints, thresholds: Thresholds) -> int | None:
    """First step of a sustained rise after warm-up: the smoothed loss climbs back above its running
    minimum by more than `divergence_share` of what it had fallen and by more than its noise, and stays up
    for `divergence_patience` points (or a twentieth of the run) in a row."""
    values = finite(loss)
    n = len(values)
    if n < thresholds.min_points_for_trend:
        return None
    w = max(3, min(endpoint_window(n, thresholds), MAX_SMOOTHING))
    curve = smoothed(values, w).to_numpy()
    running_min = np.minimum.accumulate(curve)
    fallen = np.maximum(ends.initial - running_min, 0.0)
    limit = np.maximum(thresholds.divergence_share * np.maximum(fallen, abs(ends.initial) * 0.1),
                       thresholds.divergence_noise_multiple * ends.noise)
    above = (curve - running_min) > limit
    above[: int(n * thresholds.warmup_fraction)] = False
    patience = max(thresholds.divergence_patience, int(n * 0.05))
    run = 0
    for position, flag in enumerate(above):
        run = run + 1 if flag else 0
        if run >= patience:
            return int(values.index[position - run + 1])
    return None


def spike_limit(points: int, thresholds: Thresholds) -> int:
    """How many spikes a run of this length may show before it counts as unstable."""
    return max(thresholds.spike_limit, int(math.ceil(points * thresholds.spike_rate)))


def stability(loss: pd.Series, grad_norm: pd.Series | None, ends: Endpoints, thresholds: Thresholds,
              max_grad_norm: float | None = None) -> StabilityFinding:
    nonfinite_loss = _nonfinite_steps(loss)
    nonfinite_grad = _nonfinite_steps(grad_norm)
    zero_loss = set(loss.index[loss.to_numpy(dtype=float) == 0.0].tolist())
    breakdown = tuple(s for s in nonfinite_grad if s in zero_loss)
    skipped = tuple(s for s in nonfinite_grad if s not in breakdown and s not in nonfinite_loss)
    skipped_allowed = max(1, int(len(grad_norm) * thresholds.skipped_step_rate)) if grad_norm is not None else 0
    divergence = divergence_step(loss, ends, thresholds)
    start = int(len(loss) * thresholds.warmup_fraction)
    floor = spike_floor(ends.initial, thresholds)
    finite_loss = finite(loss)
    loss_spikes = [int(s) for s in finite_loss.index[spike_mask(finite_loss.to_numpy(dtype=float),
                                                                thresholds.spike_window, thresholds.spike_zscore,
                                                                floor)]]
    loss_spikes = [s for s in loss_spikes if s >= int(loss.index[min(start, len(loss) - 1)])]
    grad_spikes: list[int] = []
    grad_p90 = clipped = None
    if grad_norm is not None and len(finite(grad_norm)):
        finite_grad_series = finite(grad_norm)
        g_start = int(grad_norm.index[min(int(len(grad_norm) * thresholds.warmup_fraction), len(grad_norm) - 1)])
        typical = float(np.median(finite_grad_series))
        grad_spikes = [int(s) for s in finite_grad_series.index[spike_mask(
            finite_grad_series.to_numpy(dtype=float), thresholds.spike_window, thresholds.spike_zscore,
            thresholds.grad_spike_ratio * typical)]]
        grad_spikes = [s for s in grad_spikes if s >= g_start]
        finite_grad = finite(grad_norm).to_numpy(dtype=float)
        grad_p90 = float(np.percentile(finite_grad, 90))
        if max_grad_norm is not None and max_grad_norm > 0:
            clipped = float(np.mean(finite_grad > max_grad_norm))
    limit = spike_limit(len(loss), thresholds)
    # Gradient-norm spikes alone are heavy-tailed batch noise in many healthy runs (batch size 1, LoRA on
    # large models): they are reported and drive clipping advice, but only the loss shows damage.
    failed = bool(nonfinite_loss or breakdown or len(skipped) > skipped_allowed or divergence is not None
                  or len(loss_spikes) > limit)
    problem_steps = [*nonfinite_loss, *breakdown, *loss_spikes, *grad_spikes]
    if len(skipped) > skipped_allowed:
        problem_steps += skipped
    if divergence is not None:
        problem_steps.append(divergence)
    # Without a gradient norm only a visible failure in the loss is evidence; a clean loss proves nothing.
    measured = grad_norm is not None or failed
    n = len(loss)
    if nonfinite_loss or breakdown or divergence is not None:
        confidence = HIGH
    elif grad_norm is not None:
        confidence = HIGH if n >= 30 else (MEDIUM if n >= 10 else LOW)
    else:
        confidence = MEDIUM if n >= 30 else LOW
    return StabilityFinding(
        measured=measured,
        stable=(not failed) if measured else None,
        nonfinite_loss_steps=nonfinite_loss,
        nonfinite_grad_steps=nonfinite_grad,
        skipped_steps=skipped,
        breakdown_steps=breakdown,
        divergence_step=divergence,
        loss_spike_steps=tuple(loss_spikes),
        grad_spike_steps=tuple(grad_spikes),
        spike_limit=limit,
        grad_norm_p90=grad_p90,
        clipped_fraction=clipped,
        first_problem_step=min(problem_steps) if problem_steps else None,
        confidence=confidence,
    )


# --- generalization: the eval trajectory ----------------------------------------------------------------


@dataclass(frozen=True)
class EvalRise:
    """Where the eval loss stands against its best so far (Prechelt's generalization loss)."""

    best: float
    best_index: int
    last: float
    generalization_loss: float | None  # percent above the best, Prechelt's GL
    margin: float  # the rise that counts: beyond the eval noise and a share of how far eval had fallen
    evals_above: int  # evaluations in a row, up to the last, above best + margin
    rising: bool  # clearly and durably above the best


def eval_rise(evals: np.ndarray, thresholds: Thresholds) -> EvalRise:
    """Is the eval loss clearly and durably above its best? Used after the run and live, point by point."""
    values = np.asarray(evals, dtype=float)
    values = values[np.isfinite(values)]
    best_index = int(np.argmin(values))
    best, last = float(values[best_index]), float(values[-1])
    fell = max(float(values[0]) - best, 0.0)
    noise = noise_sd(values) if len(values) >= 4 else 0.0
    # The lowest of n noisy evals at one level lies about sqrt(2 ln n) noise below that level, so a flat
    # eval loss sits that far above its "best" by chance alone. n counts the evals within reach of the
    # best (many on a flat curve, one or two at the bottom of a U), and the margin adds that distance.
    near_best = int(np.sum(values <= best + thresholds.eval_noise_multiple * noise))
    noise_multiple = thresholds.eval_noise_multiple + math.sqrt(2 * math.log(max(near_best, 1)))
    margin = max(noise_multiple * noise, thresholds.eval_share_of_fall * fell, thresholds.eval_min_rise * abs(best))
    above = values[best_index + 1:] > best + margin
    run = 0
    for flag in above[::-1]:
        if not flag:
            break
        run += 1
    gl = 100.0 * (last / best - 1.0) if best > 0 else None
    return EvalRise(best, best_index, last, gl, margin, run, run >= thresholds.eval_patience)


@dataclass(frozen=True)
class GeneralizationFinding:
    measured: bool
    overfitting: bool | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    eval_step: int | None = None
    gap: float | None = None  # (eval - train) / train at the last eval: shown, never scored
    best_step: int | None = None
    best_eval_loss: float | None = None
    generalization_loss: float | None = None  # Prechelt's GL, percent
    margin: float | None = None
    evals_above: int = 0
    eval_points: int = 0
    train_still_falling: bool | None = None
    confidence: str = LOW
    reason: str = ""


def generalization(loss: pd.Series, eval_loss: pd.Series | None, ends: Endpoints,
                   thresholds: Thresholds) -> GeneralizationFinding:
    """Overfitting read from the eval trajectory: eval loss clearly and durably above its best while the
    training loss kept falling. A train/eval gap alone is reported, never scored."""
    if eval_loss is None or not len(finite(eval_loss)):
        return GeneralizationFinding(measured=False, reason="no eval loss was logged")
    evals = finite(eval_loss)
    eval_step = int(evals.index[-1])
    last_eval = float(evals.iloc[-1])
    train = finite(loss)
    before = train[train.index <= eval_step]
    if not len(before):
        before = train.iloc[:1]
    train_near = float(before.iloc[-ends.window:].median())
    gap = (last_eval - train_near) / train_near if train_near > 0 else None
    best_step = int(evals.idxmin())
    if len(evals) < thresholds.min_eval_points:
        return GeneralizationFinding(
            measured=False, eval_loss=last_eval, train_loss=train_near, eval_step=eval_step, gap=gap,
            best_step=best_step, best_eval_loss=float(evals.min()), eval_points=len(evals),
            reason=f"only {len(evals)} evaluation(s) were logged; at least {thresholds.min_eval_points} are needed "
            "to see whether the eval loss rose from its best (evaluate more often, e.g. eval_steps)",
        )
    rise = eval_rise(evals.to_numpy(dtype=float), thresholds)
    train_at_best = float(train[train.index <= best_step].iloc[-ends.window:].median()) if (
        train.index <= best_step).any() else ends.initial
    still_falling = train_near <= train_at_best + ends.noise
    overfitting = rise.rising and still_falling
    excess = (rise.last - rise.best) / rise.margin if rise.margin > 0 else math.inf
    confidence = _confidence(len(evals), excess if overfitting else (1 / excess if excess > 0 else math.inf),
                             many=6, few=4)
    return GeneralizationFinding(
        measured=True,
        overfitting=overfitting,
        eval_loss=last_eval,
        train_loss=train_near,
        eval_step=eval_step,
        gap=gap,
        best_step=best_step,
        best_eval_loss=rise.best,
        generalization_loss=rise.generalization_loss,
        margin=rise.margin,
        evals_above=rise.evals_above,
        eval_points=len(evals),
        train_still_falling=still_falling,
        confidence=confidence,
    )


# --- all rules together -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    """Everything the rules found in one history; the scoring step turns it into points and advice."""

    endpoints: Endpoints
    learning: LearningFinding
    convergence: ConvergenceFinding
    stability: StabilityFinding
    generalization: GeneralizationFinding
    total_steps: int
    points: int


def _ended_broken(loss: pd.Series, broken_steps: set[int], thresholds: Thresholds) -> bool:
    """The last logged losses (a twentieth of the run, at least 3) are all non-finite or broken down."""
    tail = max(3, int(len(loss) * thresholds.endpoint_window))
    if len(loss) < tail + 2:
        return False
    last = loss.iloc[-tail:]
    return all((not math.isfinite(v)) or s in broken_steps for s, v in last.items())


@np.errstate(over="ignore", invalid="ignore")  # values near float max overflow to inf/NaN: the rules handle both
def diagnose(curves, thresholds: Thresholds, max_grad_norm: float | None = None,
             classes: float | None = None) -> Findings:
    """Run every rule on one set of curves (a ``curves.Curves``)."""
    loss = curves.train_loss
    provisional = endpoints(loss, thresholds)
    found_stability = stability(loss, curves.grad_norm, provisional, thresholds, max_grad_norm=max_grad_norm)
    broken = set(found_stability.breakdown_steps)
    ended_broken = _ended_broken(loss, broken, thresholds)
    if broken:
        # A 0.0 loss beside a NaN gradient norm is numerical breakdown, not a perfect fit: read it as NaN so
        # the endpoints and the plateau test see only the losses the model really reached.
        loss = loss.copy()
        loss.loc[list(broken)] = np.nan
    ends = endpoints(loss, thresholds) if broken else provisional
    return Findings(
        endpoints=ends,
        learning=learning(loss, ends, thresholds, classes, broken_at_end=ended_broken),
        convergence=convergence(loss, ends, thresholds),
        stability=found_stability,
        generalization=generalization(loss, curves.eval_loss, ends, thresholds),
        total_steps=max(ends.last_step, int(curves.train_loss.index[-1])),
        points=len(curves.train_loss),
    )


# --- the same rules, live -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """What a live rule found in one log entry; notify turns it into a warning message."""

    kind: str  # nonfinite | loss_spike | eval_rising
    step: int
    lead: str  # the finding in one or two sentences, with its numbers


class LiveRules:
    """The post-run rules applied one Trainer log entry at a time, for warnings while a run trains.

    Keeps the last `spike_window` losses, every eval loss and the count of non-finite gradient norms;
    ``observe`` costs O(spike_window) for a loss and O(evaluations) for an eval loss. Given the run's
    ``total_steps``, loss spikes in its first `warmup_fraction` are not alerts, as the report ignores them.
    """

    def __init__(self, thresholds: Thresholds | None = None, total_steps: int | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self._warmup_end = self.thresholds.warmup_fraction * total_steps if total_steps else 0.0
        self._losses: list[float] = []
        self._first: list[float] = []  # the first losses, for the initial loss
        self._evals: list[tuple[int, float]] = []
        self._skipped = 0
        self._grad_points = 0

    def observe(self, step: int, values: Mapping[str, float | None]) -> list[Alert]:
        t = self.thresholds
        loss, grad_norm, eval_loss = (values.get(k) for k in ("loss", "grad_norm", "eval_loss"))
        alerts: list[Alert] = []
        if grad_norm is not None:
            self._grad_points += 1
        loss_broken = loss is not None and not math.isfinite(loss)
        grad_broken = grad_norm is not None and not math.isfinite(grad_norm)
        if loss_broken or (grad_broken and loss == 0.0):
            alerts.append(Alert("nonfinite", step, _nonfinite_lead(step, loss, grad_norm)))
        else:
            if grad_broken:
                self._skipped += 1
                if self._skipped > max(1, int(self._grad_points * t.skipped_step_rate)):
                    alerts.append(Alert("nonfinite", step, f"Gradient norm is {_show(grad_norm)} at step {step} "
                                        f"({self._skipped} non-finite gradient norms so far; one alone is a step "
                                        "fp16 loss scaling skipped, repeated ones are not)."))
            if loss is not None:  # a finite loss beside a skipped step is still read for spikes
                alerts += self._loss(step, loss)
        if eval_loss is not None:
            if not math.isfinite(eval_loss):
                alerts.append(Alert("nonfinite", step, f"Eval loss is {_show(eval_loss)} at step {step}."))
            else:
                alerts += self._eval(step, eval_loss)
        return alerts

    def _loss(self, step: int, loss: float) -> list[Alert]:
        t = self.thresholds
        window = self._losses[-t.spike_window:]
        self._losses = window + [loss]
        if len(self._first) <= t.initial_points:
            self._first.append(loss)  # the start, read as the post-run analysis reads it
        if len(window) < t.spike_window or step <= self._warmup_end:
            return []
        if not is_spike(np.array(window), loss, t.spike_zscore, spike_floor(initial_loss(np.array(self._first), t), t)):
            return []
        centre = float(np.median(np.array(window) * 0.5)) * 2.0  # as is_spike: no overflow
        return [Alert("loss_spike", step, f"Loss spiked to {_show(loss)} at step {step}, far above the median of "
                      f"the previous {len(window)} logged values ({_show(centre)}) and beyond their noise.")]

    def _eval(self, step: int, eval_loss: float) -> list[Alert]:
        self._evals.append((step, eval_loss))
        if len(self._evals) < self.thresholds.min_eval_points:
            return []
        rise = eval_rise(np.array([v for _, v in self._evals]), self.thresholds)
        if not rise.rising:
            return []
        best_step = self._evals[rise.best_index][0]
        gl = f", {rise.generalization_loss:.1f}% above" if rise.generalization_loss is not None else " above"
        return [Alert("eval_rising", step, f"Eval loss rose to {_show(eval_loss)} at step {step}{gl} its best of "
                      f"{_show(rise.best)} at step {best_step}, for {rise.evals_above} evaluations in a row and "
                      f"beyond its noise. The best checkpoint is the one from step {best_step}.")]


def _nonfinite_lead(step: int, loss: float | None, grad_norm: float | None) -> str:
    grad = "" if grad_norm is None else f" (gradient norm {_show(grad_norm)})"
    if loss == 0 and grad_norm is not None and math.isnan(grad_norm):
        return f"Loss is 0.0 at step {step} with a NaN gradient norm: a numerical breakdown, not a perfect fit."
    return f"Loss is {_show(loss)} at step {step}{grad}."


def _show(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"
