"""Warnings while training runs: NaN/inf values, loss spikes, rising eval loss, stalls (pure, no I/O here).

A run keeps one ``TrainingWatch`` and feeds it every Trainer log dict; it returns the warning events to send.
Each kind of warning reaches the user at most once per run, even after a resume (``already_warned``). The
rules are those of ``diagnostics.md`` section 2: a loss spike is a rolling z-score against the previous
window, a rising eval loss is Prechelt's generalization loss GL = 100 * (eval / best eval so far - 1).
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import deque
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from notify._checks import as_finite, as_step
from notify.events import NotificationEvent, warning_event
from notify.formatting import format_duration, format_loss

NONFINITE = "nonfinite"
LOSS_SPIKE = "loss_spike"
EVAL_RISING = "eval_rising"
STALL = "stall"

# What to do about each kind of warning: the last sentence of its message, after the numbers.
WARNING_ADVICE: Mapping[str, str] = MappingProxyType(
    {
        NONFINITE: "Training has numerically broken down; lower the learning rate or enable gradient clipping.",
        LOSS_SPIKE: (
            "A single spike can be harmless; if the loss stays high, add learning-rate warm-up or gradient "
            "clipping, or lower the learning rate."
        ),
        EVAL_RISING: (
            "The model is starting to overfit: add regularization (lora_dropout, weight decay), stop early, "
            "or keep the best checkpoint (load_best_model_at_end)."
        ),
        STALL: (
            "The run may be hung (a stuck data loader, a deadlocked process, a full disk); "
            "check its process and logs."
        ),
    }
)
WARNING_KINDS: tuple[str, ...] = tuple(WARNING_ADVICE)

# The Trainer log keys the watch reads; every other key (learning_rate, epoch, eval_runtime, ...) is ignored.
LOSS_KEY = "loss"
GRAD_NORM_KEY = "grad_norm"
EVAL_LOSS_KEY = "eval_loss"


class TrainingWatch:
    """One run's warning detector: feed it each log entry with ``observe``; each kind is emitted once.

    A loss spike needs a full window of ``spike_window`` earlier finite losses, a z-score above
    ``spike_zscore`` against them (a perfectly flat window counts as infinite z, so the ratio decides) and a
    value above ``spike_min_ratio`` times their mean (so only a positive mean can spike). Eval loss is
    "rising" when GL exceeds ``eval_rise_percent`` (GL needs a positive best eval loss). ``already_warned``
    holds the kinds sent earlier for this run. ``observe`` belongs to the training loop; ``record_stall``
    may be called from a watchdog thread.
    """

    def __init__(
        self,
        spike_window: int = 20,
        spike_zscore: float = 6.0,
        spike_min_ratio: float = 1.5,
        eval_rise_percent: float = 2.0,
        already_warned: Iterable[str] = (),
    ) -> None:
        self.spike_window = as_step("spike_window", spike_window, minimum=2)
        self.spike_zscore = _positive("spike_zscore", spike_zscore)
        self.spike_min_ratio = _at_least("spike_min_ratio", spike_min_ratio, 1, "a spike is above the mean")
        self.eval_rise_percent = _at_least("eval_rise_percent", eval_rise_percent, 0, "a percentage")
        if isinstance(already_warned, str):
            raise ValueError(
                f"already_warned must be a collection of kinds such as ({NONFINITE!r},), got the string "
                f"{already_warned!r}"
            )
        warned = set(already_warned)
        bad = [kind for kind in warned if not isinstance(kind, str) or not kind.strip()]
        if bad:
            raise ValueError(f"already_warned must hold warning kinds (strings such as {WARNING_KINDS}), got {bad!r}")
        self._warned: set[str] = warned  # kinds from other sources are kept, and simply never emitted here
        self._lock = threading.Lock()  # observe() and record_stall() may run on different threads
        self._losses: deque[float] = deque(maxlen=self.spike_window)
        self._best_eval: float | None = None
        self._best_eval_step: int | None = None
        self._total_steps: int | None = None

    @property
    def warned(self) -> frozenset[str]:
        """Kinds sent by this watch or given as ``already_warned``: what to persist for a resume."""
        return frozenset(self._warned)

    def observe(
        self, step: int, metrics: Mapping[str, Any], total_steps: int | None = None
    ) -> list[NotificationEvent]:
        """One Trainer log entry at ``step``; returns the warnings it triggers (usually none).

        Reads ``loss``, ``grad_norm`` and ``eval_loss`` when they are numbers; other keys and values are
        ignored. Costs O(spike_window).
        """
        step = as_step("step", step)
        if total_steps is not None:
            self._total_steps = as_step("total_steps", total_steps, minimum=1)
        loss = _number(metrics.get(LOSS_KEY))
        grad_norm = _number(metrics.get(GRAD_NORM_KEY))
        eval_loss = _number(metrics.get(EVAL_LOSS_KEY))
        events: list[NotificationEvent] = []

        broken = any(v is not None and not math.isfinite(v) for v in (loss, grad_norm))
        if broken or (eval_loss is not None and not math.isfinite(eval_loss)):
            self._emit(events, NONFINITE, _nonfinite_lead(step, loss, grad_norm, eval_loss), step)
        # A broken entry's loss is not a measurement (the Trainer may have filtered or zeroed it).
        if loss is not None and not broken:
            lead = self._spike_lead(step, loss)
            if lead:
                self._emit(events, LOSS_SPIKE, lead, step)
            self._losses.append(loss)
        if eval_loss is not None and math.isfinite(eval_loss):
            lead = self._eval_lead(step, eval_loss)
            if lead:
                self._emit(events, EVAL_RISING, lead, step)
        return events

    def record_stall(
        self, seconds_since_last_step: float, last_step: int | None, total_steps: int | None = None
    ) -> NotificationEvent | None:
        """The stall warning (for ``StallWatchdog``'s ``on_stall``), or None when it was already sent.

        ``total_steps`` defaults to the latest one given to ``observe``.
        """
        seconds = as_finite("seconds_since_last_step", seconds_since_last_step)
        if seconds is None or seconds < 0:
            raise ValueError(f"seconds_since_last_step must be a number >= 0, got {seconds_since_last_step!r}")
        if last_step is not None:
            last_step = as_step("last_step", last_step)
        if total_steps is not None:
            total_steps = as_step("total_steps", total_steps, minimum=1)
        idle = format_duration(seconds)
        if last_step is None:
            lead = f"No training step has completed in the {idle} since the watchdog started."
        else:
            lead = f"No training step for {idle} (last step {last_step})."
        events: list[NotificationEvent] = []
        self._emit(events, STALL, lead, last_step, total_steps or self._total_steps)
        return events[0] if events else None

    def _spike_lead(self, step: int, loss: float) -> str | None:
        window = self._losses
        if LOSS_SPIKE in self._warned or len(window) < self.spike_window:
            return None
        n = len(window)
        mean = sum(window) / n
        if not (math.isfinite(mean) and mean > 0 and loss > mean and loss > self.spike_min_ratio * mean):
            return None
        variance = sum((x - mean) * (x - mean) for x in window) / n
        std = math.sqrt(variance) if math.isfinite(variance) else math.inf
        z = math.inf if std == 0 else (loss - mean) / std
        if not z > self.spike_zscore:
            return None
        spread = "a flat window" if math.isinf(z) else f"z-score {z:.1f}"
        return (
            f"Loss spiked to {_show(loss)} at step {step}, {loss / mean:.1f} times the mean of the previous "
            f"{n} logged values ({_show(mean)}; {spread})."
        )

    def _eval_lead(self, step: int, eval_loss: float) -> str | None:
        best = self._best_eval
        if best is None or eval_loss < best:
            self._best_eval, self._best_eval_step = eval_loss, step
            return None
        if best <= 0 or EVAL_RISING in self._warned:
            return None  # GL is a ratio to the best value; it means nothing for a best of 0 or below
        gl = 100 * (eval_loss / best - 1)
        if not gl > self.eval_rise_percent:
            return None
        return (
            f"Eval loss rose to {_show(eval_loss)} at step {step}, {gl:.1f}% above its best of {_show(best)} "
            f"at step {self._best_eval_step} (generalization loss above {self.eval_rise_percent:g}%). "
            f"The best checkpoint is the one from step {self._best_eval_step}."
        )

    def _emit(
        self,
        events: list[NotificationEvent],
        kind: str,
        lead: str,
        step: int | None,
        total_steps: int | None = None,
    ) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        total = self._total_steps if total_steps is None else total_steps
        events.append(warning_event(kind, f"{lead} {WARNING_ADVICE[kind]}", step, total))


def _nonfinite_lead(step: int, loss: float | None, grad_norm: float | None, eval_loss: float | None) -> str:
    grad = "" if grad_norm is None else f" (gradient norm {_show(grad_norm)})"
    if loss == 0 and grad_norm is not None and math.isnan(grad_norm):
        return f"Loss is 0.0 at step {step} with a NaN gradient norm: a numerical breakdown, not a perfect fit."
    if loss is not None and not math.isfinite(loss):
        return f"Loss is {_show(loss)} at step {step}{grad}."
    if grad_norm is not None and not math.isfinite(grad_norm):
        with_loss = "" if loss is None else f" (loss {_show(loss)})"
        return f"Gradient norm is {_show(grad_norm)} at step {step}{with_loss}."
    return f"Eval loss is {_show(eval_loss)} at step {step}."


def _number(value: Any) -> float | None:
    """A logged real number as float; anything else (text, None, bools, tensors) counts as not logged."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _show(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format_loss(value)


def _positive(field: str, value: Any) -> float:
    number = as_finite(field, value)
    if number is None or number <= 0:
        raise ValueError(f"{field} must be a finite number > 0, got {value!r}")
    return number


def _at_least(field: str, value: Any, minimum: float, why: str) -> float:
    number = as_finite(field, value)
    if number is None or number < minimum:
        raise ValueError(f"{field} must be a finite number >= {minimum:g} ({why}), got {value!r}")
    return number
