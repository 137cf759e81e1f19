"""Milestone detection: which of 25/50/75/100% a step update crosses, and a per-run memory of what was sent.

Pure and integer-exact, so a jump over several milestones, a total that does not divide by four, or a
resume from an earlier checkpoint behave the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from notify._checks import as_finite, as_score, as_step
from notify.events import (
    MILESTONE_LEADS,
    MILESTONE_TITLES,
    MILESTONES,
    EventType,
    NotificationEvent,
    completion_event,
)
from notify.formatting import format_duration, format_loss, format_score, format_steps


@dataclass(frozen=True)
class ProgressUpdate:
    """Training moved from ``previous_step`` to ``current_step``; the optional numbers enrich the message.

    ``previous_step`` None means the step just before (``current_step - 1``, floored at 0).
    ``elapsed_seconds`` is wall time since training (re)started at ``start_step`` (0, or the step a resumed
    run started from), so the pace behind the ETA counts only the steps done in that time;
    ``quality_score`` (0-100) may be provisional.
    """

    current_step: int
    total_steps: int
    previous_step: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    elapsed_seconds: float | None = None
    quality_score: float | None = None
    start_step: int = 0

    def __post_init__(self) -> None:
        total = as_step("total_steps", self.total_steps, minimum=1)
        current = as_step("current_step", self.current_step)
        start = as_step("start_step", self.start_step)
        if start > current:
            raise ValueError(f"start_step ({start}) must be <= current_step ({current})")
        if self.previous_step is None:
            previous = max(current - 1, 0)
        else:
            previous = as_step("previous_step", self.previous_step)
        if current > total:
            raise ValueError(f"current_step ({current}) must be <= total_steps ({total})")
        if previous > current:
            raise ValueError(
                f"previous_step ({previous}) must be <= current_step ({current}); "
                "after a resume from an earlier checkpoint, start again from that step"
            )
        elapsed = as_finite("elapsed_seconds", self.elapsed_seconds)
        if elapsed is not None and elapsed < 0:
            raise ValueError(f"elapsed_seconds must be >= 0, got {elapsed!r}")
        values = {
            "total_steps": total,
            "current_step": current,
            "previous_step": previous,
            "loss": as_finite("loss", self.loss),
            "eval_loss": as_finite("eval_loss", self.eval_loss),
            "elapsed_seconds": elapsed,
            "quality_score": as_score("quality_score", self.quality_score),
            "start_step": start,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def percent(self) -> float:
        """Share of the planned steps done, 0-100."""
        return 100 * self.current_step / self.total_steps

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace since ``start_step``; None before the first step done since then or
        without ``elapsed_seconds``."""
        done = self.current_step - self.start_step
        if self.elapsed_seconds is None or done <= 0:
            return None
        return self.elapsed_seconds * (self.total_steps - self.current_step) / done


def crossed_milestones(progress: ProgressUpdate) -> tuple[int, ...]:
    """Milestones reached at ``current_step`` but not yet at ``previous_step``, ascending.

    A milestone m is reached at step s when ``m * total <= s * 100``: integer arithmetic, no float error.
    """
    total = progress.total_steps
    return tuple(
        m for m in MILESTONES if progress.previous_step * 100 < m * total <= progress.current_step * 100
    )


def milestone_event(milestone: int, progress: ProgressUpdate) -> NotificationEvent:
    """The notification for one milestone; 100 is the completion event (with sound and quality score)."""
    if milestone not in MILESTONES:
        raise ValueError(f"milestone must be one of {MILESTONES}, got {milestone!r}")
    if milestone == 100:
        return completion_event(
            progress.quality_score,
            None,
            current_step=progress.current_step,
            total_steps=progress.total_steps,
            extra_lines=_progress_lines(progress),
            details=_progress_details(progress),
        )
    lines = [
        MILESTONE_LEADS[milestone],
        format_steps(progress.current_step, progress.total_steps),
        *_progress_lines(progress),
    ]
    if progress.quality_score is not None:
        lines.append(f"Provisional quality score: {format_score(progress.quality_score)}/100 (from the history so far)")
    return NotificationEvent(
        title=MILESTONE_TITLES[milestone],
        message="\n".join(line for line in lines if line),
        event_type=EventType.PROGRESS,
        milestone=milestone,
        current_step=progress.current_step,
        total_steps=progress.total_steps,
        details=_progress_details(progress),
    )


def check_progress_milestone(progress: ProgressUpdate) -> NotificationEvent | None:
    """The product API: the event of the highest milestone this update crosses, or None.

    Stateless, so it cannot deduplicate across calls; a training run uses ``NotificationManager``.
    """
    crossed = crossed_milestones(progress)
    return milestone_event(crossed[-1], progress) if crossed else None


class NotificationManager:
    """One run's memory of sent milestones, so each reaches the user once, even after a resume.

    ``already_sent`` holds milestones recorded earlier for this run (read back from its events log);
    ``start_step`` is the step training (re)starts from: milestones at or before it count as passed.
    Not thread-safe: feed it from the one process that notifies.
    """

    def __init__(self, total_steps: int, already_sent: Iterable[int] = (), *, start_step: int = 0) -> None:
        self._total = as_step("total_steps", total_steps, minimum=1)
        sent = set(already_sent)
        unknown = sorted(m for m in sent if isinstance(m, bool) or m not in MILESTONES)
        if unknown:
            raise ValueError(f"already_sent may only hold milestones {MILESTONES}, got {unknown!r}")
        start = as_step("start_step", start_step)
        if start > self._total:
            raise ValueError(f"start_step ({start}) must be <= total_steps ({self._total})")
        self._sent: set[int] = sent
        self._start_step = start
        self._last_step = start
        self._last_progress: ProgressUpdate | None = None
        self._completion_pending = False
        self._events: list[NotificationEvent] = []

    @property
    def total_steps(self) -> int:
        return self._total

    @property
    def start_step(self) -> int:
        """The step training (re)started from: the ETA's pace counts only the steps since."""
        return self._start_step

    @property
    def last_step(self) -> int:
        """The step of the latest update (``start_step`` before any)."""
        return self._last_step

    @property
    def sent_milestones(self) -> frozenset[int]:
        """Milestones sent by this manager or given as ``already_sent``: what to persist for a resume."""
        return frozenset(self._sent)

    @property
    def notifications(self) -> tuple[NotificationEvent, ...]:
        """Every event emitted or recorded by this manager, in order."""
        return tuple(self._events)

    @property
    def completion_pending(self) -> bool:
        """The 100% milestone was reached under ``hold_completion`` and waits for ``complete()``."""
        return self._completion_pending

    def update(
        self,
        current_step: int,
        *,
        loss: float | None = None,
        eval_loss: float | None = None,
        elapsed_seconds: float | None = None,
        quality_score: float | None = None,
        hold_completion: bool = False,
    ) -> list[NotificationEvent]:
        """Training is now at ``current_step``; returns the newly crossed milestones' events, ascending."""
        step = as_step("current_step", current_step)
        progress = ProgressUpdate(
            current_step=step,
            total_steps=self._total,
            previous_step=min(self._last_step, step),
            loss=loss,
            eval_loss=eval_loss,
            elapsed_seconds=elapsed_seconds,
            quality_score=quality_score,
            start_step=min(self._start_step, step),
        )
        return self.check(progress, hold_completion=hold_completion)

    def check(self, progress: ProgressUpdate, *, hold_completion: bool = False) -> list[NotificationEvent]:
        """Like ``update`` with an explicit update; a gap since the last step seen is covered too.

        With ``hold_completion`` the 100% milestone is not emitted but kept due for ``complete()``, so the
        completion notification can carry the final quality score.
        """
        if progress.total_steps != self._total:
            raise ValueError(
                f"progress.total_steps ({progress.total_steps}) differs from this run's total_steps "
                f"({self._total}); start a new NotificationManager when the plan changes"
            )
        window = replace(progress, previous_step=min(self._last_step, progress.previous_step))
        self._last_step = progress.current_step
        self._last_progress = progress
        events = []
        for milestone in crossed_milestones(window):
            if milestone in self._sent:
                continue
            if milestone == 100 and hold_completion:
                self._completion_pending = True
                continue
            events.append(self._emit(milestone_event(milestone, progress)))
        return events

    def complete(
        self,
        quality_score: float | None = None,
        assessment: str | None = None,
        extra_lines: Sequence[str] = (),
        *,
        suggestions: Sequence[str] = (),
        run_url: str | None = None,
    ) -> NotificationEvent | None:
        """Emits the completion event once (None if 100% was already sent), at whatever step training ended.

        Without ``quality_score`` the latest update's (provisional) score is used, if it had one.
        """
        if 100 in self._sent:
            return None
        progress = self._last_progress
        if quality_score is None and progress is not None:
            quality_score = progress.quality_score
        event = completion_event(
            quality_score,
            assessment,
            suggestions,
            current_step=self._last_step,
            total_steps=self._total,
            run_url=run_url,
            extra_lines=[*(_progress_lines(progress) if progress else ()), *extra_lines],
            details=_progress_details(progress) if progress else None,
        )
        return self._emit(event)

    def record(self, event: NotificationEvent) -> NotificationEvent:
        """Keeps a start, warning or error event in ``notifications``; a milestone may not be sent twice."""
        if not isinstance(event, NotificationEvent):
            raise ValueError(f"event must be a NotificationEvent, got {type(event).__name__}")
        if event.milestone is not None and event.milestone in self._sent:
            raise ValueError(
                f"milestone {event.milestone} was already sent for this run; "
                "use update()/complete(), which skip sent milestones"
            )
        return self._emit(event)

    def _emit(self, event: NotificationEvent) -> NotificationEvent:
        self._events.append(event)
        if event.milestone is not None:
            self._sent.add(event.milestone)
            if event.milestone == 100:
                self._completion_pending = False
        return event


def _progress_lines(progress: ProgressUpdate) -> list[str]:
    """Loss and timing lines, each only when its numbers are known."""
    lines = []
    if progress.loss is not None and progress.eval_loss is not None:
        lines.append(f"Loss: {format_loss(progress.loss)}, eval loss: {format_loss(progress.eval_loss)}")
    elif progress.loss is not None:
        lines.append(f"Loss: {format_loss(progress.loss)}")
    elif progress.eval_loss is not None:
        lines.append(f"Eval loss: {format_loss(progress.eval_loss)}")
    if progress.elapsed_seconds is not None:
        eta = progress.eta_seconds
        left = f", about {format_duration(eta)} left" if eta else ""
        lines.append(f"Elapsed: {format_duration(progress.elapsed_seconds)}{left}")
    return lines


def _progress_details(progress: ProgressUpdate) -> dict[str, Any]:
    """The numbers behind the message, for logs and channels that render fields."""
    facts = {
        "percent": progress.percent,
        "loss": progress.loss,
        "eval_loss": progress.eval_loss,
        "elapsed_seconds": progress.elapsed_seconds,
        "eta_seconds": progress.eta_seconds,
        "quality_score": progress.quality_score,
    }
    return {key: value for key, value in facts.items() if value is not None}
