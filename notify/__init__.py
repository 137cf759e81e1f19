"""Milestone notifications for training runs: what to say and when, in pure code (no I/O here).

``check_progress_milestone`` is the stateless product API; a training run keeps one ``NotificationManager``
so that no milestone is ever sent twice, even after a resume. Likewise one ``TrainingWatch`` per run turns
Trainer logs into warnings (NaN/inf, loss spike, rising eval loss, stall), each sent once.

Sending is the other room, ``notify.delivery`` (apprise channels, the delivery worker, and the
``StallWatchdog`` thread that notices when steps stop coming). Its names are re-exported here but load
on first use, so that ``import notify`` imports no apprise and starts no thread.
"""

from notify.events import (
    DEFAULT_URGENCY,
    MILESTONE_TITLES,
    MILESTONES,
    EventType,
    NotificationEvent,
    Urgency,
    completion_event,
    error_event,
    start_event,
    unsent_metrics_event,
    warning_event,
)
from notify.formatting import format_duration, format_loss
from notify.milestones import (
    NotificationManager,
    ProgressUpdate,
    check_progress_milestone,
    crossed_milestones,
    milestone_event,
)
from notify.watch import (
    EVAL_RISING,
    LOSS_SPIKE,
    NONFINITE,
    STALL,
    WARNING_ADVICE,
    WARNING_KINDS,
    TrainingWatch,
)

__all__ = [
    "DEFAULT_URGENCY",
    "EVAL_RISING",
    "LOSS_SPIKE",
    "MILESTONES",
    "MILESTONE_TITLES",
    "NONFINITE",
    "EventType",
    "NotificationEvent",
    "NotificationManager",
    "ProgressUpdate",
    "STALL",
    "TrainingWatch",
    "Urgency",
    "WARNING_ADVICE",
    "WARNING_KINDS",
    "check_progress_milestone",
    "completion_event",
    "crossed_milestones",
    "error_event",
    "format_duration",
    "format_loss",
    "milestone_event",
    "start_event",
    "unsent_metrics_event",
    "warning_event",
]

# Delivery imports apprise; it loads on first use so that `import notify` stays pure and light.
_LAZY = frozenset(
    {"ChannelError", "Channels", "fit_message", "load_channels", "Notifier", "StallWatchdog", "test_channels"}
)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'notify' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module("notify.delivery"), name)
    globals()[name] = value
    return value
