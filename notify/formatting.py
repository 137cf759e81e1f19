"""Short, human-readable numbers for notification text.

Notifications are read on a phone or in a chat window, so durations are coarse ("1h 02m") and losses keep
four significant digits: enough to compare two updates, not so many that the line wraps.
"""

from __future__ import annotations

import math

LOSS_SIGNIFICANT_DIGITS = 4


def format_duration(seconds: float) -> str:
    """``12s``, ``3m 05s`` or ``1h 02m``: seconds are dropped once hours appear, nobody waits on them."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    total = math.floor(seconds + 0.5)  # nearest whole second, halves up
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_loss(value: float) -> str:
    """A loss with four significant digits (``0.3521``, ``2.1``, ``1.235e+04``)."""
    if not math.isfinite(value):
        raise ValueError(f"loss must be a finite number, got {value!r}")
    return f"{value:.{LOSS_SIGNIFICANT_DIGITS}g}"


def format_percent(current_step: int, total_steps: int) -> str:
    """Whole percent, rounded down, so that only the last step ever reads ``100%``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps!r}")
    return f"{current_step * 100 // total_steps}%"


def format_score(score: float) -> str:
    """``82`` for a whole score, ``82.5`` otherwise: a quality score never needs more than one decimal."""
    if not math.isfinite(score):
        raise ValueError(f"quality score must be a finite number, got {score!r}")
    rounded = round(score, 1)
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"


def format_steps(current_step: int | None, total_steps: int | None) -> str | None:
    """``Step 500/1000 (50%)``; as much of it as is known, or None when neither step is known."""
    if current_step is None:
        return None
    if not total_steps or current_step > total_steps:
        return f"Step {current_step}"
    return f"Step {current_step}/{total_steps} ({format_percent(current_step, total_steps)})"
