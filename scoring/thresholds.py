"""Every tunable threshold of the curve rules, with its default and why.

The scoring *tables* are fixed (``tables.py``); these are the knobs that turn a noisy metric history into
the tables' inputs. ``docs/scoring.md`` gives the published rule behind each default. Rules compare a
change with the curve's own noise (``rules.noise_sd``) and scale (its starting level), so the defaults hold
for losses of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


def _knob(default: float, help: str) -> float:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Thresholds:
    # endpoints and "did it learn"
    initial_points: int = _knob(3, "Logs after the first that tell a first-log outlier (the initial loss is then "
                                "their median with the first).")
    first_log_outlier: float = _knob(5.0, "A first log above this multiple of the next logs' median is an outlier, "
                                     "not the initial loss.")
    endpoint_window: float = _knob(0.05, "Fraction of the logged points whose median is the final loss (at least "
                                   "3, at most half the run).")
    learned_noise_multiple: float = _knob(2.0, "The loss must fall by more than this many times its noise to "
                                          "count as learned.")
    learned_min_drop: float = _knob(0.02, "... and by more than this fraction of its initial level.")
    chance_margin: float = _knob(0.10, "A final loss within this fraction of chance level (ln K) means the "
                                 "classifier learned nothing.")
    # convergence
    convergence_window: float = _knob(0.20, "Final fraction of the logged points examined for a remaining trend.")
    min_window_points: int = _knob(5, "Fewest points in the final window, however short the run.")
    convergence_min_change: float = _knob(0.05, "A change over the final window smaller than this fraction of the "
                                          "loss level does not matter (a relative threshold, as ReduceLROnPlateau's).")
    convergence_share_of_fall: float = _knob(0.01, "Nor does one smaller than this share of the whole run's fall "
                                             "(a loss near zero still halving is not still learning).")
    trend_alpha: float = _knob(0.05, "Significance level of the Mann-Kendall trend test (Hamed-Rao corrected).")
    min_points_for_trend: int = _knob(8, "Fewest logged loss points for which convergence is judged at all.")
    min_points_for_trend_test: int = _knob(10, "Fewest points in the final window for the trend test; below it "
                                           "only the size of the change decides, with low confidence.")
    plateau_tolerance: float = _knob(0.02, "Smoothed loss within this fraction of its final value (or its "
                                     "noise) counts as being on the plateau.")
    # stability
    warmup_fraction: float = _knob(0.10, "Leading fraction of the run ignored by the divergence and spike rules "
                                   "(warm-up is allowed to be rough).")
    divergence_share: float = _knob(0.5, "A sustained climb back by this share of what the loss had fallen is "
                                    "divergence (a multiple of a running minimum misfires near zero).")
    divergence_noise_multiple: float = _knob(3.0, "... and by more than this many times the loss noise.")
    divergence_patience: int = _knob(3, "Consecutive smoothed points above the divergence line needed to call "
                                     "it (at least a twentieth of the run).")
    spike_window: int = _knob(20, "Points in the trailing window a value is compared with for spikes.")
    spike_zscore: float = _knob(6.0, "Robust z-score (median and MAD of the window) above which a point is a spike.")
    spike_min_rise: float = _knob(0.10, "A loss spike must also rise above the window by this fraction of the "
                                  "loss's initial level (ignores noise on losses near zero).")
    grad_spike_ratio: float = _knob(2.0, "A gradient-norm spike must rise above the window by this multiple of "
                                    "the run's median gradient norm.")
    spike_limit: int = _knob(3, "Loss spikes a short run may show and still be stable (gradient-norm spikes are "
                             "reported, never counted: alone they are batch noise).")
    spike_rate: float = _knob(0.01, "Longer runs may show this fraction of their logged points as spikes.")
    skipped_step_rate: float = _knob(0.01, "Non-finite gradient norms with a finite loss (fp16 skipped steps) "
                                     "allowed, as a fraction of the logged points (at least one).")
    # generalization
    min_eval_points: int = _knob(3, "Fewest evaluations for judging the eval trajectory.")
    eval_noise_multiple: float = _knob(2.0, "Eval loss must rise above its best by more than this many times "
                                       "its noise to count as rising.")
    eval_share_of_fall: float = _knob(0.10, "... and by more than this share of how far it had fallen before.")
    eval_min_rise: float = _knob(0.02, "... and by more than this fraction of its best value.")
    eval_patience: int = _knob(2, "Evaluations in a row, up to the last, above that line for overfitting.")
    # advice
    underfit_reduction: float = _knob(0.10, "Relative loss reduction below which the model is underfitting.")
    early_best_fraction: float = _knob(0.10, "Best eval loss this early in the run means far too many steps were run.")
    extreme_clipping_fraction: float = _knob(0.5, "Above this fraction of clipped updates, lower the learning "
                                             "rate instead of clipping.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Thresholds.{f.name} must be a finite number, got {value!r}")
            if value <= 0:
                raise ValueError(f"Thresholds.{f.name} must be positive, got {value!r}")
            if f.type in ("int", int) and value != int(value):
                raise ValueError(f"Thresholds.{f.name} is a count and must be a whole number, got {value!r}")
            if f.type in ("int", int):
                object.__setattr__(self, f.name, int(value))
        for name in FRACTIONS:
            if getattr(self, name) >= 1:
                raise ValueError(f"Thresholds.{name} is a fraction and must be below 1, got {getattr(self, name)!r}")


FRACTIONS = ("endpoint_window", "learned_min_drop", "chance_margin", "convergence_window",
             "convergence_min_change", "convergence_share_of_fall", "trend_alpha", "plateau_tolerance",
             "warmup_fraction", "spike_rate", "skipped_step_rate", "eval_share_of_fall", "eval_min_rise",
             "early_best_fraction", "extreme_clipping_fraction")


def markdown_table() -> str:
    """Every threshold with its default and why: the table in docs/scoring.md (a test keeps them equal)."""
    rows = ["| threshold | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {f.default:g} | {f.metadata['help']} |" for f in fields(Thresholds)]
    return "\n".join(rows)
