"""Should this run stop, and why: the pure decision behind ``stop_on`` (no MLflow, torch or apprise here).

``StopRules`` reads the Trainer's log entries one at a time with the rules the post-run analysis uses
(``rules.LiveRules`` for non-finite values, ``rules.eval_rise`` for overfitting, ``rules.divergence_step``
for divergence) and returns a ``StopDecision`` the first time a condition the user opted into is met:

- ``nan``: a non-finite loss or eval loss, or repeated non-finite gradient norms; fires at once.
- ``overfitting``: the eval loss is above its best by more than its noise (the analysis's margin) for
  ``patience`` evaluations in a row; never within the noise, never before ``min_eval_points`` evaluations.
- ``divergence``: the smoothed training loss climbed back durably after warm-up (the analysis's rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .rules import LiveRules, divergence_step, endpoints, eval_rise
from .thresholds import Thresholds

NAN = "nan"
DIVERGENCE = "divergence"
OVERFITTING = "overfitting"
STOP_CONDITIONS: tuple[str, ...] = (NAN, DIVERGENCE, OVERFITTING)
DEFAULT_PATIENCE = 3  # evaluations in a row above the best (beyond the noise) before an overfitting stop


def parse_stop_on(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"nan,overfitting"`` (commas or spaces, any case) as a tuple of conditions; empty means none.
    Raises ``ValueError`` naming the unknown word and the accepted ones."""
    if text is None:
        return ()
    words = text.replace(",", " ").split() if isinstance(text, str) else [str(w) for w in text]
    conditions: list[str] = []
    for word in (w.strip().lower() for w in words):
        if word in ("", "none", "off"):
            continue
        if word not in STOP_CONDITIONS:
            raise ValueError(f"stop_on: unknown condition {word!r}; use a comma-separated list of "
                             f"{', '.join(STOP_CONDITIONS)} (e.g. stop_on=nan,overfitting), or leave it empty")
        if word not in conditions:
            conditions.append(word)
    return tuple(conditions)


@dataclass(frozen=True)
class StopDecision:
    """Why training stops: the condition, the step it was found at, and what happened in words."""

    condition: str  # nan | divergence | overfitting
    step: int  # the step whose log entry met the condition
    reason: str  # e.g. "eval loss rose for 3 evaluations since step 40"
    best_step: int | None = None  # the step of the best eval loss seen so far, when there was an evaluation

    def sentence(self, stopped_step: int, adapter_step: int | None) -> str:
        """The line of the completion message: where it stopped, why, and which weights are the adapter."""
        if adapter_step is None:
            adapter = "the adapter is the one from the last step (no evaluation came before the stop)"
        else:
            adapter = f"the adapter is the one from step {adapter_step}"
        return f"stopped early at step {stopped_step}: {self.reason}; {adapter}"

    @property
    def tag(self) -> str:
        """The run tag's value: ``condition: reason``."""
        return f"{self.condition}: {self.reason}"


class StopRules:
    """Feed it every log entry (``observe(step, {"loss": ..., "grad_norm": ..., "eval_loss": ...})``); it
    returns a ``StopDecision`` once, the first time one of ``stop_on`` is met, and None otherwise.

    Costs O(spike_window) per loss and O(evaluations) per eval loss; with ``divergence`` the loss curve so
    far is re-read after every 2% more points (amortized O(1) points per log entry)."""

    def __init__(self, stop_on: Iterable[str] | str, patience: int = DEFAULT_PATIENCE,
                 thresholds: Thresholds | None = None, total_steps: int | None = None) -> None:
        self.stop_on = parse_stop_on(stop_on)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"stop_patience must be a whole number of evaluations >= 1, got {patience!r}")
        self.patience = patience
        self.thresholds = replace(thresholds or Thresholds(), eval_patience=patience)
        self._live = LiveRules(self.thresholds, total_steps=total_steps)
        self._evals: list[tuple[int, float]] = []
        self._loss_steps: list[int] = []
        self._loss_values: list[float] = []
        self._checked_at = 0
        self.decision: StopDecision | None = None

    @property
    def best_eval_step(self) -> int | None:
        """The step of the lowest finite eval loss so far (the earliest of equal ones)."""
        finite_evals = [(v, s) for s, v in self._evals if math.isfinite(v)]
        return min(finite_evals)[1] if finite_evals else None

    def observe(self, step: int, values: Mapping[str, float | None]) -> StopDecision | None:
        if self.decision is not None or not self.stop_on:
            return None
        loss, eval_loss = values.get("loss"), values.get("eval_loss")
        if eval_loss is not None:
            self._evals.append((int(step), float(eval_loss)))
        alerts = self._live.observe(step, values)  # keeps LiveRules' state current even when nan is not asked
        if NAN in self.stop_on:
            for alert in alerts:
                if alert.kind == "nonfinite":
                    return self._decide(NAN, step, _nonfinite_reason(alert.lead))
        if OVERFITTING in self.stop_on and eval_loss is not None and math.isfinite(eval_loss):
            decision = self._overfitting(step)
            if decision is not None:
                return decision
        if DIVERGENCE in self.stop_on and loss is not None and math.isfinite(loss):
            self._loss_steps.append(int(step))
            self._loss_values.append(float(loss))
            return self._divergence(step)
        return None

    def _decide(self, condition: str, step: int, reason: str) -> StopDecision:
        self.decision = StopDecision(condition, int(step), reason, self.best_eval_step)
        return self.decision

    def _overfitting(self, step: int) -> StopDecision | None:
        evals = [(s, v) for s, v in self._evals if math.isfinite(v)]
        if len(evals) < self.thresholds.min_eval_points:
            return None
        rise = eval_rise(np.array([v for _, v in evals]), self.thresholds)
        if not rise.rising:
            return None
        best_step = evals[rise.best_index][0]
        reason = f"eval loss rose for {rise.evals_above} evaluations since step {best_step}"
        return self._decide(OVERFITTING, step, reason)

    def _divergence(self, step: int) -> StopDecision | None:
        n = len(self._loss_values)
        if n < self.thresholds.min_points_for_trend or n - self._checked_at < max(1, n // 50):
            return None
        self._checked_at = n
        loss = pd.Series(self._loss_values, index=self._loss_steps, dtype=float)
        loss = loss[~loss.index.duplicated(keep="last")]
        try:
            start = divergence_step(loss, endpoints(loss, self.thresholds), self.thresholds)
        except ValueError:
            return None
        if start is None:
            return None
        return self._decide(DIVERGENCE, step, f"the training loss diverged from step {start}")


def _nonfinite_reason(lead: str) -> str:
    """The live rule's sentence, lower-cased at the start and without its final full stop."""
    text = lead.strip().rstrip(".")
    return text[:1].lower() + text[1:]
