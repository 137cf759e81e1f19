"""The data model of a quality analysis: what goes in (`TrainingResult`) and what comes out.

Values are frozen dataclasses validated once in ``__post_init__``, so a bad input fails where it is made,
with the field's name, instead of producing a wrong score later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = "1.1"  # 1.1: verdicts with confidence, top_concern


class Category(str, Enum):
    CONVERGENCE = "convergence"
    OVERFITTING = "overfitting"
    UNDERFITTING = "underfitting"
    EFFICIENCY = "efficiency"
    STABILITY = "stability"


class Priority(str, Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        return ("high", "medium", "low").index(self.value)


def _check_finite(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"TrainingResult.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(
            f"TrainingResult.{name} is {value!r}; pass a finite number (a NaN or inf loss belongs in "
            "loss_history, where it counts as a stability failure)"
        )
    return float(value)


def _check_flag(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"TrainingResult.{name} must be True, False or None (not measured), got {value!r}")


def _as_floats(name: str, values: Sequence[float] | None) -> tuple[float, ...]:
    if values is None:
        return ()
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"TrainingResult.{name} must be a sequence of numbers: {exc}") from None


@dataclass(frozen=True)
class TrainingResult:
    """What a finished training run gives the scorer.

    The first six fields are the product specification's; ``None`` in an optional field means "not
    measured", and that factor is then left out of the score instead of being guessed.
    """

    final_loss: float
    initial_loss: float
    epochs_completed: float | None = None
    total_steps: int | None = None
    convergence_achieved: bool | None = None
    gradient_norm_stable: bool | None = None
    validation_loss: float | None = None
    train_loss_at_validation: float | None = field(
        default=None, metadata={"help": "Training loss near the step of validation_loss (default: final_loss)."}
    )
    loss_history: Sequence[float] = ()
    eval_loss_history: Sequence[float] = ()
    gradient_norms: Sequence[float] = ()
    learning_rate: float | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite("final_loss", self.final_loss)
        _check_finite("initial_loss", self.initial_loss)
        _check_finite("validation_loss", self.validation_loss, optional=True)
        _check_finite("train_loss_at_validation", self.train_loss_at_validation, optional=True)
        if self.epochs_completed is not None:
            if _check_finite("epochs_completed", self.epochs_completed) <= 0:
                raise ValueError(
                    f"TrainingResult.epochs_completed must be positive, got {self.epochs_completed!r} "
                    "(use None when unknown)"
                )
        if self.total_steps is not None:
            if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps <= 0:
                raise ValueError(f"TrainingResult.total_steps must be a positive integer, got {self.total_steps!r}")
        if self.learning_rate is not None and _check_finite("learning_rate", self.learning_rate) <= 0:
            raise ValueError(f"TrainingResult.learning_rate must be positive, got {self.learning_rate!r}")
        _check_flag("convergence_achieved", self.convergence_achieved)
        _check_flag("gradient_norm_stable", self.gradient_norm_stable)
        for name in ("loss_history", "eval_loss_history", "gradient_norms"):
            object.__setattr__(self, name, _as_floats(name, getattr(self, name)))
        if not isinstance(self.hyperparameters, Mapping):
            raise ValueError("TrainingResult.hyperparameters must be a mapping of parameter name to value")
        object.__setattr__(self, "hyperparameters", dict(self.hyperparameters))


@dataclass(frozen=True)
class ImprovementSuggestion:
    """One actionable piece of advice; ``parameter`` and the two values make it a concrete change."""

    category: Category
    priority: Priority
    message: str
    parameter: str | None = None
    current_value: Any = None
    suggested_value: Any = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "category", Category(self.category))
        except ValueError:
            allowed = ", ".join(c.value for c in Category)
            raise ValueError(
                f"ImprovementSuggestion.category must be one of {allowed}, got {self.category!r}") from None
        try:
            object.__setattr__(self, "priority", Priority(self.priority))
        except ValueError:
            raise ValueError(
                f"ImprovementSuggestion.priority must be one of high, medium, low, got {self.priority!r}"
            ) from None
        if not self.message:
            raise ValueError("ImprovementSuggestion.message must not be empty")

    @property
    def change(self) -> str | None:
        """The concrete change in one line, e.g. ``learning_rate: 2e-4 -> 1e-4``."""
        if self.parameter is None or self.suggested_value is None:
            return None
        current = "unset" if self.current_value is None else format_value(self.current_value)
        return f"{self.parameter}: {current} -> {format_value(self.suggested_value)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category.value,
            "priority": self.priority.value,
            "message": self.message,
            "parameter": self.parameter,
            "current_value": _json_safe(self.current_value),
            "suggested_value": _json_safe(self.suggested_value),
            "change": self.change,
        }


@dataclass(frozen=True)
class FactorScore:
    """One of the five factors: the points it earned and, in plain words, why."""

    name: str
    points: float
    max_points: int
    measured: bool
    explanation: str
    value: float | None = None  # the table's input (reduction ratio, gap, loss per epoch), when numeric

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points if self.measured else None,
            "max_points": self.max_points,
            "measured": self.measured,
            "value": _json_safe(self.value),
            "explanation": self.explanation,
        }


CONFIDENCES = ("high", "medium", "low")
# What the user should act on first, most fundamental first; "none" when nothing important was found.
CONCERNS = ("not_learned", "unstable", "overfitting", "not_converged", "none")


@dataclass(frozen=True)
class Verdict:
    """One yes/no reading of the run (did it learn, converge, ...), how sure it is, and why."""

    answer: str  # yes | no | cannot_tell | not_measured
    confidence: str  # high | medium | low
    reason: str

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"Verdict.confidence must be one of {', '.join(CONFIDENCES)}, got {self.confidence!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "confidence": self.confidence, "reason": self.reason}


@dataclass(frozen=True)
class QualityAnalysis:
    """The analysis of one run. ``to_dict`` is the stable, versioned JSON form (``quality/analysis.json``)."""

    quality_score: float
    overall_assessment: str
    factors: Mapping[str, FactorScore]
    suggestions: tuple[ImprovementSuggestion, ...]
    metrics_summary: Mapping[str, Any]
    events: Mapping[str, Any] = field(default_factory=dict)
    metric_names: Mapping[str, str] = field(default_factory=dict)
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)  # learned, converged, unstable, overfit
    top_concern: str = "none"  # one of CONCERNS
    curves: Any = field(default=None, repr=False, compare=False)  # the series behind the plot, not serialized

    @property
    def top_suggestion(self) -> ImprovementSuggestion | None:
        return self.suggestions[0] if self.suggestions else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "quality_score": self.quality_score,
            "overall_assessment": self.overall_assessment,
            "factors": {name: f.to_dict() for name, f in self.factors.items()},
            "suggestions": [s.to_dict() for s in self.suggestions],
            "metrics_summary": {k: _json_safe(v) for k, v in self.metrics_summary.items()},
            "events": {k: _json_safe(v) for k, v in self.events.items()},
            "metric_names": dict(self.metric_names),
            "verdicts": {name: v.to_dict() for name, v in self.verdicts.items()},
            "top_concern": self.top_concern,
        }


def format_value(value: Any) -> str:
    """Short, exact-enough rendering of a parameter value: 0.0002 -> '2e-4', 16 -> '16', 0.1 -> '0.1'.

    Values below 0.01 use the exponent form, so a learning rate and its half read alike (1e-3 -> 5e-4).
    """
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and math.isfinite(value) and (abs(value) < 1e-2 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value
