"""The product's five-factor scoring tables, as data.

These numbers are fixed by the product specification (see docs/scoring.md, "The score") and pinned by
tests; change them there first. Each table lists ``(threshold, points)`` rows, checked in order; the
first row whose comparison holds wins, otherwise ``default`` applies.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreTable:
    """One factor's table: ``value <op> threshold`` -> points, first match wins."""

    name: str
    max_points: int
    compare: Callable[[float, float], bool]
    rows: tuple[tuple[float, int], ...]
    default: int

    def points(self, value: float) -> int:
        for threshold, points in self.rows:
            if self.compare(value, threshold):
                return points
        return self.default

    def band(self, value: float, percent: bool = False) -> str:
        """The table row ``value`` falls in, in words: 'above 80%', 'at most 20%', 'below 10%'."""
        show = (lambda t: f"{t * 100:g}%") if percent else (lambda t: f"{t:g}")
        words = {operator.gt: ("above", "at most"), operator.lt: ("below", "at least"),
                 operator.ge: ("at least", "below")}[self.compare]
        for threshold, _ in self.rows:
            if self.compare(value, threshold):
                return f"{words[0]} {show(threshold)}"
        return f"{words[1]} {show(self.rows[-1][0])}"


# r = (initial - final) / initial
LOSS_REDUCTION = ScoreTable(
    "loss_reduction", 30, operator.gt, ((0.8, 30), (0.6, 25), (0.4, 20), (0.2, 10)), default=5
)
# converged -> 25, not converged -> 10 (a boolean factor: value 1.0 or 0.0)
CONVERGENCE = ScoreTable("convergence", 25, operator.ge, ((1.0, 25),), default=10)
# stable gradients -> 20, unstable -> 5 (a boolean factor)
STABILITY = ScoreTable("stability", 20, operator.ge, ((1.0, 20),), default=5)
# g = (eval - train) / train
OVERFITTING = ScoreTable("overfitting", 15, operator.lt, ((0.10, 15), (0.30, 10)), default=0)
# e = (initial - final) / epochs
EFFICIENCY = ScoreTable("efficiency", 10, operator.gt, ((0.1, 10), (0.05, 7)), default=3)

TABLES: dict[str, ScoreTable] = {
    t.name: t for t in (LOSS_REDUCTION, CONVERGENCE, STABILITY, OVERFITTING, EFFICIENCY)
}
FACTOR_NAMES: tuple[str, ...] = tuple(TABLES)

# Overall assessment by score, highest band first.
ASSESSMENTS: tuple[tuple[float, str], ...] = (
    (85.0, "Excellent - ready to use"),
    (70.0, "Good - minor improvements possible"),
    (50.0, "Fair - needs improvement"),
    (0.0, "Poor - significant issues"),
)


def assessment_for(score: float) -> str:
    for floor, label in ASSESSMENTS:
        if score >= floor:
            return label
    return ASSESSMENTS[-1][1]
