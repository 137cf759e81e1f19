"""The message about a run that died without a word (pure: no I/O here).

``peft-studio watch`` finds RUNNING runs whose heartbeat stopped (a SIGKILL, the OOM killer, a lost node),
marks them FAILED and sends this error event: how long the run has been silent, its last step and losses,
its partial score when the history could be scored, and where to look.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from notify.events import EventType, NotificationEvent, Urgency
from notify.formatting import format_duration, format_loss

SILENT_TITLE = "Training Died Without a Word"


def silent_run_event(run_name: str, silent_seconds: float, last_beat_utc: str, last_step: int | None,
                     losses: Mapping[str, float], quality_score: float | None = None,
                     run_url: str | None = None) -> NotificationEvent:
    """A run whose heartbeat stopped ``silent_seconds`` ago (at ``last_beat_utc``), now marked FAILED.
    ``losses`` holds its last logged ``loss`` / ``eval_loss`` (either may be missing)."""
    silent = format_duration(max(float(silent_seconds), 0.0)) if math.isfinite(silent_seconds) else "a long time"
    lines = [f"Run {run_name} has sent no heartbeat for {silent} (since {last_beat_utc}): its process died "
             "without reporting (killed, out of memory, or its machine went away). It is now marked FAILED."]
    lines.append(f"Last logged step: {last_step}" if last_step is not None else "No step was logged.")
    shown = [f"{name.replace('_', ' ')} {format_loss(value)}" for name, value in
             ((k, losses.get(k)) for k in ("loss", "eval_loss")) if value is not None and math.isfinite(value)]
    if shown:
        lines.append("Last losses: " + ", ".join(shown))
    if quality_score is not None:
        lines.append(f"Score of the partial history: {quality_score:g}/100 (report in the run)")
    if run_url:
        lines.append(f"Run: {run_url}")
    return NotificationEvent(
        title=SILENT_TITLE,
        message="\n".join(lines),
        event_type=EventType.ERROR,
        current_step=last_step,
        urgency=Urgency.CRITICAL,
        details={"exc_type": "no heartbeat", "silent_seconds": round(float(silent_seconds), 1),
                 "last_heartbeat": last_beat_utc, "stopped": False},
    )
