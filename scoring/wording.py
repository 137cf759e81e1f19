"""How numbers are written in explanations and suggestions: a change reads "rose 9.5%" or "fell 9.5%",
the sign carried by the verb and never repeated in the number (no "fell -9.5%")."""

from __future__ import annotations

from collections.abc import Callable


def pct(x: float) -> str:
    """A ratio as a percentage with one decimal: 0.095 -> '9.5%'."""
    return f"{x * 100:.1f}%"


def moved(change: float, show: Callable[[float], str] = pct) -> str:
    """'rose <n>' for a positive change, 'fell <n>' for a negative one (the number always unsigned), and
    'did not change' when it is zero as shown."""
    amount = show(abs(change))
    if change == 0 or amount == show(0.0):
        return "did not change"
    return f"{'rose' if change > 0 else 'fell'} {amount}"


def span(first: int, last: int) -> str:
    """A range of steps: '110-136', or '-20 to -5' where a dash would read as a double sign."""
    return f"{first}-{last}" if last >= 0 else f"{first} to {last}"
