"""Field checks shared by the notify dataclasses.

Every message names the field and what is allowed, so a caller's mistake reads as one line with its fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def as_step(field: str, value: Any, *, minimum: int = 0) -> int:
    """A step count: a whole number (numpy ints welcome, ``True`` is not a step) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field} must be a whole number of steps (an int, not bool), got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value}")
    return value


def as_finite(field: str, value: Any) -> float | None:
    """An optional real number; NaN and inf are refused so that they never reach a message or JSON."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field} must be a number or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite (not NaN or inf), got {value!r}; pass None if it is unknown")
    return value


def as_score(field: str, value: Any) -> float | None:
    """An optional quality score on the product's 0-100 scale."""
    value = as_finite(field, value)
    if value is not None and not 0 <= value <= 100:
        raise ValueError(f"{field} must be between 0 and 100, got {value!r}")
    return value


def as_text(field: str, value: Any) -> str:
    """A non-blank string: a notification without it would arrive empty."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value
