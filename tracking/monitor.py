"""Everything that happens beside a training loop: start, milestones, warnings, stalls, completion, crash.

``TrainingMonitor`` ties ``notify``'s pure logic (milestones, warning detection) to delivery (a
``Notifier``) and to ``scoring`` (the provisional score in milestone messages). It is what our Trainer
callback uses, and it works the same from a plain PyTorch loop:

    monitor = TrainingMonitor(notifier, total_steps=1000)
    monitor.register_notification_callback(lambda event: print(event.title))
    monitor.start(model="my-model", data="my-data")
    for step in range(1, 1001):
        loss = train_step()
        monitor.log(step, {"loss": loss})
        monitor.step(step)
    monitor.complete()          # or monitor.fail(exc, step) in an except block
    monitor.close()

The training loop pays for a list append and a few comparisons per call (about 0.15 ms per step, see
``bench/RESULTS.md``); the provisional score of a milestone is computed on a background thread, and
sending is the notifier's background thread. Both still hold Python's GIL while they work (12-70 ms of
pandas for a score, a few ms per send), which shows as one slower step right after each milestone when
steps are a few milliseconds; pass ``provisional_scores=False`` where that matters.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from notify import (
    NotificationEvent,
    NotificationManager,
    ProgressUpdate,
    error_event,
    milestone_event,
    start_event,
)
from notify.watch import TrainingWatch
from notify.watchdog import StallWatchdog
from scoring import LiveRules, analyze_history

log = logging.getLogger(__name__)

DEFAULT_STALL_MINUTES = 15.0


class TrainingMonitor:
    """Notifications for one training run. Only create it on the main process."""

    def __init__(
        self,
        notifier,
        total_steps: int,
        *,
        already_sent: Iterable[int] = (),
        already_warned: Iterable[str] = (),
        start_step: int = 0,
        stall_minutes: float = DEFAULT_STALL_MINUTES,
        provisional_scores: bool = True,
        params: Mapping[str, Any] | None = None,
    ):
        self.notifier = notifier
        self.manager = NotificationManager(total_steps, already_sent=tuple(already_sent), start_step=start_step)
        self.watch = TrainingWatch(rules=LiveRules(total_steps=total_steps), already_warned=tuple(already_warned))
        self.params = dict(params or {})
        self.provisional_scores = provisional_scores
        self.history: list[tuple[str, int, float]] = []  # (key, step, value): what analyze_history reads
        self.latest: dict[str, float] = {}
        self.step_reached = start_step
        self.phase = "training"  # what the run is doing: named by a stall warning
        self.started = time.monotonic()
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peft-studio-score")
        self._watchdog = (StallWatchdog(stall_minutes * 60, on_stall=self._on_stall) if stall_minutes > 0 else None)

    # -- the Python callback API -------------------------------------------------------------------------
    def register_notification_callback(self, fn: Callable[[NotificationEvent], Any]):
        """Call ``fn(event)`` for every event of this run (on the delivery thread)."""
        return self.notifier.add_callback(fn)

    # -- loop events -------------------------------------------------------------------------------------
    def start(self, model: str, data: str, run_url: str | None = None) -> None:
        self.started = time.monotonic()
        self._send(start_event(model, data, self.manager.total_steps, run_url=run_url))
        if self._watchdog is not None:
            self._watchdog.start()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """A log entry of the loop (loss, grad_norm, eval_loss, ...): kept for scores, checked for warnings."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.history.append((key, step, float(value)))
                if key in ("loss", "eval_loss") and math.isfinite(value):
                    self.latest[key] = float(value)
        for event in self.watch.observe(step, metrics, total_steps=self.manager.total_steps):
            self._send(event)

    def progress(self, phase: str = "training") -> None:
        """Progress other than a finished step (an eval batch, a saved checkpoint, the end-of-run work):
        beats the stall watchdog; ``phase`` is what a stall warning will say the run was doing."""
        self.phase = phase
        if self._watchdog is not None:
            self._watchdog.beat(self.step_reached)

    def step(self, step: int, next_phase: str = "training") -> None:
        """A finished optimizer step: beats the stall watchdog and emits crossed milestones (not 100%).
        ``next_phase`` is what comes before the next step (evaluating, saving a checkpoint)."""
        self.step_reached = step
        self.progress(next_phase)
        events = self.manager.update(
            min(step, self.manager.total_steps),
            loss=self.latest.get("loss"),
            eval_loss=self.latest.get("eval_loss"),
            elapsed_seconds=time.monotonic() - self.started,
            hold_completion=True,
        )
        for event in events:
            if self.provisional_scores and len(self.history) > 1:
                snapshot = list(self.history)
                self._scorer.submit(self._send_with_score, event, snapshot)
            else:
                self._send(event)

    def complete(self, analysis=None, run_url: str | None = None, attachments: Iterable[str] = ()) -> None:
        """The completion message: final score, assessment, top three suggestions, run link."""
        event = self.manager.complete(
            analysis.quality_score if analysis else None,
            analysis.overall_assessment if analysis else None,
            suggestions=[s.change or s.message for s in analysis.suggestions[:3]] if analysis else (),
            run_url=run_url,
        )
        if event is not None:
            self._send(event, attachments)

    def fail(self, exc: BaseException, stopped: bool = False) -> None:
        """An error (or, with ``stopped``, Ctrl-C/SIGTERM) message; never raises, so the original
        exception is the one the user sees."""
        try:
            tail = "".join(traceback.format_exception(exc)[-3:])
            self._send(error_event(type(exc).__name__, str(exc), current_step=self.step_reached,
                                   total_steps=self.manager.total_steps, traceback_tail=tail, stopped=stopped))
        except Exception as send_failure:
            log.warning("could not send the error notification: %s", send_failure)

    def send(self, event: NotificationEvent) -> None:
        """Any other event of this run (e.g. the tracking store being away), through the same channels."""
        self._send(event)

    def close(self) -> None:
        """Stop the watchdog, let pending scores go out, then flush the notifier (bounded)."""
        if self._watchdog is not None:
            self._watchdog.stop()
        self._scorer.shutdown(wait=True)
        self.notifier.close()

    # -- internals ---------------------------------------------------------------------------------------
    def _send(self, event: NotificationEvent, attachments: Iterable[str] = ()) -> None:
        self.notifier.send(event, tuple(attachments))

    def _send_with_score(self, event: NotificationEvent, snapshot: list[tuple[str, int, float]]) -> None:
        score = None
        try:
            frame = pd.DataFrame(snapshot, columns=["key", "step", "value"])
            score = analyze_history(frame, params=self.params).quality_score
        except Exception as exc:  # too little history yet, or odd values: send without a score
            log.debug("no provisional score at step %s: %s", event.current_step, exc)
        if score is not None:
            details = event.details
            event = milestone_event(event.milestone, ProgressUpdate(
                current_step=event.current_step, total_steps=event.total_steps,
                previous_step=max(0, event.current_step - 1),
                loss=details.get("loss"), eval_loss=details.get("eval_loss"),
                elapsed_seconds=details.get("elapsed_seconds"), quality_score=score,
                start_step=min(self.manager.start_step, event.current_step)))
        self._send(event)

    def _on_stall(self, seconds: float, step: int | None) -> None:
        event = self.watch.record_stall(seconds, step, total_steps=self.manager.total_steps, phase=self.phase)
        if event is not None:
            self._send(event)
