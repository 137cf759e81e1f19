"""Every tunable threshold of the history rules, with its default and where it comes from.

The scoring *tables* are fixed (``tables.py``); these are the knobs that turn a noisy metric history
into the tables' inputs. See ``diagnostics.md`` section 2 for the published rules behind each default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Thresholds:
    endpoint_window: float = field(
        default=0.05,
        metadata={"help": "Fraction of the logged points averaged for the initial and final loss (at least 1)."},
    )
    convergence_window: float = field(
        default=0.20,
        metadata={"help": "Final fraction of the run examined for a remaining trend (the plateau test)."},
    )
    convergence_min_improvement: float = field(
        default=0.01,
        metadata={
            "help": "Relative loss change over the final window below which the run counts as converged "
            "(ReduceLROnPlateau's `threshold`)."
        },
    )
    trend_alpha: float = field(
        default=0.05,
        metadata={"help": "Significance level of the Mann-Kendall trend test (Hamed-Rao corrected)."},
    )
    min_points_for_trend: int = field(
        default=5, metadata={"help": "Fewest logged loss points for which convergence is judged at all."}
    )
    min_points_for_trend_test: int = field(
        default=10,
        metadata={"help": "Fewest points in the final window for the trend test; below it only the relative "
                  "change decides (a short window converges only when practically flat)."},
    )
    warmup_fraction: float = field(
        default=0.10,
        metadata={"help": "Leading fraction of the run ignored by the divergence rule (warm-up is allowed to be rough)."},
    )
    divergence_factor: float = field(
        default=2.0,
        metadata={"help": "Loss above this multiple of its running minimum counts as diverging (OLMo, Axolotl)."},
    )
    divergence_patience: int = field(
        default=3, metadata={"help": "Consecutive logged points above the divergence line needed to call it."}
    )
    spike_window: int = field(
        default=20, metadata={"help": "Points in the trailing window a value is compared with for spikes."}
    )
    spike_zscore: float = field(
        default=6.0, metadata={"help": "Rolling z-score above which a point is a spike."}
    )
    spike_min_ratio: float = field(
        default=1.5,
        metadata={"help": "A spike must also exceed this multiple of the trailing mean (ignores noise on flat curves)."},
    )
    spike_limit: int = field(
        default=3, metadata={"help": "Spikes (loss and gradient norm together) at which training counts as unstable."}
    )
    generalization_loss_limit: float = field(
        default=2.0,
        metadata={"help": "Prechelt's GL (percent above the best eval loss) above which eval loss is rising."},
    )
    underfit_reduction: float = field(
        default=0.10, metadata={"help": "Relative loss reduction below which the model is underfitting."}
    )
    plateau_tolerance: float = field(
        default=0.02,
        metadata={"help": "Smoothed loss within this fraction of its final value counts as being on the plateau."},
    )
    early_best_fraction: float = field(
        default=0.10, metadata={"help": "Best eval loss this early in the run means far too many steps were run."}
    )
    late_best_fraction: float = field(
        default=0.75, metadata={"help": "Best eval loss after this fraction of the run means training longer may help."}
    )
    extreme_clipping_fraction: float = field(
        default=0.5,
        metadata={"help": "Above this fraction of clipped updates, lower the learning rate instead of clipping."},
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Thresholds.{f.name} must be a finite number, got {value!r}")
            if value <= 0:
                raise ValueError(f"Thresholds.{f.name} must be positive, got {value!r}")
        for name in ("endpoint_window", "convergence_window", "warmup_fraction", "early_best_fraction",
                     "late_best_fraction", "trend_alpha", "extreme_clipping_fraction"):
            if getattr(self, name) >= 1:
                raise ValueError(f"Thresholds.{name} is a fraction and must be below 1, got {getattr(self, name)!r}")
