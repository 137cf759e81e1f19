"""Milestone notifications for training runs: pure detection and deduplication (no I/O here).

``check_progress_milestone`` is the stateless product API; a training run keeps one ``NotificationManager``
so that no milestone is ever sent twice, even after a resume.
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

__all__ = [
    "DEFAULT_URGENCY",
    "MILESTONES",
    "MILESTONE_TITLES",
    "EventType",
    "NotificationEvent",
    "NotificationManager",
    "ProgressUpdate",
    "Urgency",
    "check_progress_milestone",
    "completion_event",
    "crossed_milestones",
    "error_event",
    "format_duration",
    "format_loss",
    "milestone_event",
    "start_event",
    "warning_event",
]
