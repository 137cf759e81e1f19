"""What a notification says: event kinds, urgencies, milestone wording, and builders for each event.

Events are plain values so that the training loop can build them without I/O, and the delivery worker,
the run's ``notifications/events.jsonl`` and the tests all see the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any

from notify._checks import as_score, as_step, as_text
from notify.formatting import format_score, format_steps


class EventType(str, Enum):
    """Why a notification is sent; delivery routes channels by this value."""

    START = "start"
    PROGRESS = "progress"
    WARNING = "warning"
    ERROR = "error"
    COMPLETION = "completion"

    def __str__(self) -> str:
        return self.value


class Urgency(str, Enum):
    """How loudly a channel may announce the event (apprise notify types map onto these)."""

    LOW = "low"
    NORMAL = "normal"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return self.value


DEFAULT_URGENCY: Mapping[EventType, Urgency] = MappingProxyType(
    {
        EventType.START: Urgency.LOW,
        EventType.PROGRESS: Urgency.LOW,
        EventType.WARNING: Urgency.NORMAL,
        EventType.ERROR: Urgency.CRITICAL,
        EventType.COMPLETION: Urgency.NORMAL,
    }
)

MILESTONES: tuple[int, ...] = (25, 50, 75, 100)

# Fixed by the product specification; the README quotes them.
MILESTONE_TITLES: Mapping[int, str] = MappingProxyType(
    {
        25: "Training 25% Complete",
        50: "Training Halfway There!",
        75: "Training 75% Complete",
        100: "Training Complete! 🎉",
    }
)

# The first line of each milestone's message.
MILESTONE_LEADS: Mapping[int, str] = MappingProxyType(
    {
        25: "Off to a good start: a quarter of the training is done.",
        50: "Midpoint update: half of the training is done.",
        75: "Nearly done: three quarters of the training are behind you.",
        100: "Training has finished.",
    }
)

START_TITLE = "Training Started"
WARNING_TITLE = "Training Warning: {kind}"
FAILED_TITLE = "Training Failed"
STOPPED_TITLE = "Training Stopped"

MAX_SUGGESTIONS = 3  # a notification points at the report; it does not replace it
MAX_TRACEBACK_CHARS = 1500  # chat channels cut long bodies; the full traceback is in the run's logs


@dataclass(frozen=True)
class NotificationEvent:
    """One thing worth telling the user, as a value that can be logged, compared and replayed.

    ``sound`` and ``urgency`` left as None take the event type's defaults: only completion makes a sound,
    and urgency comes from ``DEFAULT_URGENCY``. ``details`` holds the numbers behind the message (loss,
    eval_loss, eta_seconds, quality_score, ...) and must be JSON-safe.
    """

    title: str
    message: str
    event_type: EventType
    milestone: int | None = None
    current_step: int | None = None
    total_steps: int | None = None
    sound: bool | None = None
    urgency: Urgency | None = None
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        as_text("title", self.title)
        as_text("message", self.message)
        event_type = _as_enum("event_type", EventType, self.event_type)
        set_(self, "event_type", event_type)
        if self.milestone is not None and (isinstance(self.milestone, bool) or self.milestone not in MILESTONES):
            raise ValueError(f"milestone must be one of {MILESTONES} or None, got {self.milestone!r}")
        for name in ("current_step", "total_steps"):
            if getattr(self, name) is not None:
                set_(self, name, as_step(name, getattr(self, name)))
        sound = event_type is EventType.COMPLETION if self.sound is None else self.sound
        if not isinstance(sound, bool):
            raise ValueError(f"sound must be True, False or None, got {sound!r}")
        if sound and event_type is not EventType.COMPLETION:
            raise ValueError(
                f"sound=True is only for completion events, not {event_type.value!r}; leave sound unset"
            )
        set_(self, "sound", sound)
        urgency = DEFAULT_URGENCY[event_type] if self.urgency is None else self.urgency
        set_(self, "urgency", _as_enum("urgency", Urgency, urgency))
        set_(self, "details", _json_safe_details(self.details))

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-safe builtins (enums as their string values), for logs and ``events.jsonl``."""
        return {
            "title": self.title,
            "message": self.message,
            "event_type": self.event_type.value,
            "milestone": self.milestone,
            "current_step": self.current_step,
            "total_steps": self.total_steps,
            "sound": self.sound,
            "urgency": self.urgency.value,
            "details": json.loads(json.dumps(dict(self.details))),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotificationEvent:
        """The inverse of ``to_dict``, for reading a run's ``events.jsonl`` back."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown NotificationEvent fields {sorted(unknown)}; expected those of to_dict()")
        return cls(**data)


def start_event(model: str, data: str, total_steps: int, run_url: str | None = None) -> NotificationEvent:
    """Tells the user a run began: what is trained, on what, for how long, and where to watch it."""
    where = f"Watch it live: {run_url}" if run_url else "Watch it live with `mlflow ui`."
    details: dict[str, Any] = {"model": model, "data": data, "total_steps": total_steps}
    if run_url:
        details["run_url"] = run_url
    return NotificationEvent(
        title=START_TITLE,
        message=f"Fine-tuning {model} on {data} for {total_steps} steps.\n{where}",
        event_type=EventType.START,
        current_step=0,
        total_steps=total_steps,
        details=details,
    )


def warning_event(
    kind: str, message: str, current_step: int | None = None, total_steps: int | None = None
) -> NotificationEvent:
    """Something looks wrong (a loss spike, NaN gradients) but training goes on."""
    as_text("kind", kind)
    lines = [message, format_steps(current_step, total_steps)]
    return NotificationEvent(
        title=WARNING_TITLE.format(kind=kind),
        message=_join(lines),
        event_type=EventType.WARNING,
        current_step=current_step,
        total_steps=total_steps,
        details={"kind": kind},
    )


def error_event(
    exc_type: str,
    exc_message: str,
    current_step: int | None = None,
    total_steps: int | None = None,
    traceback_tail: str = "",
    stopped: bool = False,
) -> NotificationEvent:
    """Training ended early: a crash (critical) or a deliberate stop such as Ctrl-C or SIGTERM (normal).

    Lenient with empty texts, because it is built while handling a crash and must not raise there.
    """
    what = exc_type or "an unknown error"
    if exc_message:
        what = f"{what}: {exc_message}"
    lines = [
        f"Training was stopped ({what})." if stopped else f"Training failed with {what}",
        format_steps(current_step, total_steps),
    ]
    if traceback_tail.strip():
        lines += ["", "Last lines of the traceback:", traceback_tail.strip()[-MAX_TRACEBACK_CHARS:]]
    return NotificationEvent(
        title=STOPPED_TITLE if stopped else FAILED_TITLE,
        message=_join(lines),
        event_type=EventType.ERROR,
        current_step=current_step,
        total_steps=total_steps,
        urgency=Urgency.NORMAL if stopped else Urgency.CRITICAL,
        details={"exc_type": exc_type, "exc_message": exc_message, "stopped": stopped},
    )


TRACKING_TITLE = "MLflow Record Incomplete"


def unsent_metrics_event(points: int, path: str, error: str | None, current_step: int | None = None,
                         total_steps: int | None = None) -> NotificationEvent:
    """The tracking store was away when the run ended: say where the points are kept and how to send them."""
    lines = [
        f"The MLflow tracking store did not take {points} logged point(s)" + (f" ({error})." if error else "."),
        f"They are kept in {path}.",
        f"When the store is back, send them to the run: peft-studio upload {path}",
        format_steps(current_step, total_steps),
    ]
    return NotificationEvent(
        title=TRACKING_TITLE,
        message=_join(lines),
        event_type=EventType.ERROR,
        current_step=current_step,
        total_steps=total_steps,
        details={"unsent_points": points, "unsent_path": path},
    )


def completion_event(
    quality_score: float | None,
    assessment: str | None,
    suggestions: Sequence[str] = (),
    current_step: int | None = None,
    total_steps: int | None = None,
    run_url: str | None = None,
    *,
    extra_lines: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
) -> NotificationEvent:
    """The 100% milestone: the one event with a sound, carrying the quality score when it is known.

    ``extra_lines`` (loss, elapsed time) go between the score and the suggestions; ``details`` are merged
    under the completion's own facts.
    """
    quality_score = as_score("quality_score", quality_score)
    lines = [MILESTONE_LEADS[100], format_steps(current_step, total_steps)]
    if quality_score is not None:
        score_line = f"Quality score: {format_score(quality_score)}/100"
        lines.append(f"{score_line} ({assessment})" if assessment else score_line)
    elif assessment:
        lines.append(f"Assessment: {assessment}")
    lines += list(extra_lines)
    top = [s for s in suggestions if s and s.strip()][:MAX_SUGGESTIONS]
    if top:
        lines += ["Suggestions:", *(f"• {s}" for s in top)]
    if run_url:
        lines.append(f"Run: {run_url}")
    facts: dict[str, Any] = dict(details or {})
    facts.update(
        {
            key: value
            for key, value in (
                ("quality_score", quality_score),
                ("assessment", assessment),
                ("suggestions", top or None),
                ("run_url", run_url),
            )
            if value is not None
        }
    )
    return NotificationEvent(
        title=MILESTONE_TITLES[100],
        message=_join(lines),
        event_type=EventType.COMPLETION,
        milestone=100,
        current_step=current_step,
        total_steps=total_steps,
        details=facts,
    )


SAMPLE_CHARS = 90  # a chat line; the whole samples table is in the run


def _clip(text: str, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample_lines(prompt: str, first_output: str, last_output: str, first_step: int, last_step: int) -> list[str]:
    """One sample prompt with its first and last output, for the completion message: the change training made."""
    lines = [f"Sample: “{_clip(prompt)}”", f"• step {first_step}: “{_clip(first_output) or '(empty)'}”"]
    if last_step != first_step:
        lines.append(f"• step {last_step}: “{_clip(last_output) or '(empty)'}”")
    return lines


def judge_lines(mean_score: float | None, verdicts: int, error: str | None) -> list[str]:
    """The LLM judge's verdict in one line: its mean score, or why there is none."""
    if error and not verdicts:
        return [f"LLM judge: unavailable ({_clip(error, 160)})"]
    line = f"LLM judge: mean score {mean_score:.2f} over {verdicts} verdict(s)" if mean_score is not None else \
        "LLM judge: no verdict"
    return [line + (f" (incomplete: {_clip(error, 120)})" if error else "")]


def _join(lines: Sequence[str | None]) -> str:
    return "\n".join(line for line in lines if line is not None)


def _as_enum(name: str, enum: type[Enum], value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _json_safe_details(details: Any) -> Mapping[str, Any]:
    """A read-only copy, refused unless it serializes as strict JSON (no NaN, string keys)."""
    if not isinstance(details, Mapping):
        raise ValueError(f"details must be a mapping of str to JSON-safe values, got {type(details).__name__}")
    bad_keys = [key for key in details if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"details keys must be strings, got {bad_keys!r}")
    try:
        json.dumps(dict(details), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON-safe (numbers, strings, lists, dicts; no NaN): {exc}") from None
    return MappingProxyType(dict(details))
