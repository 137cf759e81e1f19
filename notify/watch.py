"""Warnings while training runs: NaN/inf values, loss spikes, rising eval loss, stalls (pure, no I/O here).

A run keeps one ``TrainingWatch`` and feeds it every Trainer log dict; it returns the warning events to send.
Each kind of warning reaches the user at most once per run, even after a resume (``already_warned``).
What counts as a spike, a rising eval loss or a numerical breakdown is decided by the curve rules the
post-run analysis uses (``scoring.LiveRules``), handed in by the caller as ``rules``: one set of rules for
both, and notify stays free of scoring imports. This module adds the advice, the once-per-kind policy and
the stall warning.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from notify._checks import as_finite, as_step
from notify.events import NotificationEvent, warning_event
from notify.formatting import format_duration

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
    """One run's warnings: feed it each log entry with ``observe``; each kind is emitted once.

    ``rules`` is an object with ``observe(step, {"loss": ..., "grad_norm": ..., "eval_loss": ...})``
    returning findings that have ``kind``, ``step`` and ``lead`` (``scoring.LiveRules``); without it only
    stalls are reported. ``already_warned`` holds the kinds sent earlier for this run. ``observe`` belongs
    to the training loop; ``record_stall`` may be called from a watchdog thread.
    """

    def __init__(self, rules: Any = None, already_warned: Iterable[str] = ()) -> None:
        if rules is not None and not callable(getattr(rules, "observe", None)):
            raise ValueError(f"rules must have an observe(step, values) method (scoring.LiveRules), got {rules!r}")
        if isinstance(already_warned, str):
            raise ValueError(
                f"already_warned must be a collection of kinds such as ({NONFINITE!r},), got the string "
                f"{already_warned!r}"
            )
        warned = set(already_warned)
        bad = [kind for kind in warned if not isinstance(kind, str) or not kind.strip()]
        if bad:
            raise ValueError(f"already_warned must hold warning kinds (strings such as {WARNING_KINDS}), got {bad!r}")
        self._rules = rules
        self._warned: set[str] = warned  # kinds from other sources are kept, and simply never emitted here
        self._lock = threading.Lock()  # observe() and record_stall() may run on different threads
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
        ignored.
        """
        step = as_step("step", step)
        if total_steps is not None:
            self._total_steps = as_step("total_steps", total_steps, minimum=1)
        values = {key: _number(metrics.get(key)) for key in (LOSS_KEY, GRAD_NORM_KEY, EVAL_LOSS_KEY)}
        events: list[NotificationEvent] = []
        if self._rules is None or all(v is None for v in values.values()):
            return events
        for finding in self._rules.observe(step, values):
            if finding.kind in WARNING_ADVICE:
                self._emit(events, finding.kind, finding.lead, finding.step)
        return events

    def record_stall(
        self, seconds_since_last_step: float, last_step: int | None, total_steps: int | None = None,
        phase: str | None = None,
    ) -> NotificationEvent | None:
        """The stall warning (for ``StallWatchdog``'s ``on_stall``), or None when it was already sent.

        ``total_steps`` defaults to the latest one given to ``observe``. ``phase`` names what the run was
        doing when progress stopped (e.g. "evaluating", "saving a checkpoint"); None or "training" reads as
        a training step that never finished.
        """
        seconds = as_finite("seconds_since_last_step", seconds_since_last_step)
        if seconds is None or seconds < 0:
            raise ValueError(f"seconds_since_last_step must be a number >= 0, got {seconds_since_last_step!r}")
        if last_step is not None:
            last_step = as_step("last_step", last_step)
        if total_steps is not None:
            total_steps = as_step("total_steps", total_steps, minimum=1)
        idle = format_duration(seconds)
        if phase not in (None, "training"):
            after = "" if last_step is None else f" after step {last_step}"
            lead = f"No progress for {idle} while {phase}{after}."
        elif last_step is None:
            lead = f"No training step has completed in the {idle} since the watchdog started."
        else:
            lead = f"No training step for {idle} (last step {last_step})."
        events: list[NotificationEvent] = []
        self._emit(events, STALL, lead, last_step, total_steps or self._total_steps)
        return events[0] if events else None

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


def _number(value: Any) -> float | None:
    """A logged real number as float; anything else (text, None, bools, tensors) counts as not logged."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


