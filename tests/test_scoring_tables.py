"""The product's five-factor score (docs/scoring.md, "The score"), pinned at every boundary through the public API.

Inputs are chosen so the float arithmetic lands exactly on a boundary; each case asserts the factor's
computed value too, so a case that silently missed its boundary would fail instead of passing vacuously.
"""

from __future__ import annotations

import json

import pytest

from scoring import (
    FACTOR_NAMES,
    SCHEMA_VERSION,
    Category,
    Priority,
    QualityAnalysis,
    TrainingResult,
    analyze_training_quality,
)
from scoring.report import render_markdown

INITIAL = 10.0  # (10 - 2) / 10 == 0.8 exactly in floats, likewise 0.6, 0.4, 0.2
JUST = 1e-9


def scalar(**fields) -> QualityAnalysis:
    """Analyze a scalar TrainingResult: initial 10.0, final 2.0 unless given."""
    fields.setdefault("initial_loss", INITIAL)
    fields.setdefault("final_loss", 2.0)
    return analyze_training_quality(TrainingResult(**fields))


# --- loss reduction: r = (initial - final) / initial; r > 0.8 -> 30, > 0.6 -> 25, > 0.4 -> 20, > 0.2 -> 10, else 5

LOSS_REDUCTION_CASES = [
    # (final_loss, exact r or None, points)
    (2.0, 0.8, 25),  # exactly 0.8 is not "above 0.8"
    (2.0 - JUST, None, 30),  # just above 0.8
    (0.0, 1.0, 30),  # loss reached zero
    (4.0, 0.6, 20),  # exactly 0.6
    (4.0 - JUST, None, 25),
    (6.0, 0.4, 10),  # exactly 0.4
    (6.0 - JUST, None, 20),
    (8.0, 0.2, 5),  # exactly 0.2
    (8.0 - JUST, None, 10),
    (10.0, 0.0, 5),  # no change
    (12.0, -0.2, 5),  # loss rose
    (-5.0, 1.5, 30),  # ended below zero (e.g. a loss with a constant offset): still a reduction above 80%
]


@pytest.mark.parametrize("final_loss, exact_r, points", LOSS_REDUCTION_CASES)
def test_loss_reduction_points_at_every_boundary(final_loss, exact_r, points):
    factor = scalar(final_loss=final_loss).factors["loss_reduction"]
    if exact_r is not None:
        assert factor.value == exact_r
    assert factor.measured
    assert factor.points == points
    assert factor.max_points == 30


def test_loss_reduction_explanation_says_whether_the_loss_fell_or_rose():
    assert "fell" in scalar(final_loss=2.0).factors["loss_reduction"].explanation
    rose = scalar(final_loss=12.0).factors["loss_reduction"].explanation
    assert "rose" in rose and "20.0% increase" in rose


@pytest.mark.parametrize("initial_loss", [0.0, -1.0])
def test_loss_reduction_is_not_measured_when_the_initial_loss_is_not_positive(initial_loss):
    analysis = scalar(initial_loss=initial_loss, final_loss=-2.0, convergence_achieved=True)
    factor = analysis.factors["loss_reduction"]
    assert not factor.measured
    assert factor.explanation.startswith("not measured")
    assert analysis.quality_score == 100.0  # only convergence (25/25) was measured


# --- convergence (25 / 10) and stability (20 / 5): flags; None means not measured ---------------------

FLAG_CASES = [
    # (factor, field, flag, measured, points)
    ("convergence", "convergence_achieved", True, True, 25),
    ("convergence", "convergence_achieved", False, True, 10),
    ("convergence", "convergence_achieved", None, False, 0),
    ("stability", "gradient_norm_stable", True, True, 20),
    ("stability", "gradient_norm_stable", False, True, 5),
    ("stability", "gradient_norm_stable", None, False, 0),
]


@pytest.mark.parametrize("name, field, flag, measured, points", FLAG_CASES)
def test_flag_factors_score_true_false_and_leave_none_unmeasured(name, field, flag, measured, points):
    analysis = scalar(**{field: flag})
    factor = analysis.factors[name]
    assert factor.measured is measured
    assert factor.points == points
    assert analysis.to_dict()["factors"][name]["points"] == (points if measured else None)


# --- overfitting: g = (eval - train) / train; g < 0.10 -> 15, g < 0.30 -> 10, else 0 ----------------------

OVERFITTING_CASES = [
    # (validation_loss against a training loss of 10.0, exact g or None, points)
    (11.0, 0.1, 10),  # exactly 0.10 is not "below 0.10"
    (11.0 - JUST, None, 15),  # just below 0.10
    (13.0, 0.3, 0),  # exactly 0.30
    (13.0 - JUST, None, 10),  # just below 0.30
    (10.0, 0.0, 15),  # no gap
    (9.0, -0.1, 15),  # eval below train
    (30.0, 2.0, 0),
]


@pytest.mark.parametrize("validation_loss, exact_gap, points", OVERFITTING_CASES)
def test_overfitting_points_at_every_boundary(validation_loss, exact_gap, points):
    factor = scalar(validation_loss=validation_loss, train_loss_at_validation=10.0).factors["overfitting"]
    if exact_gap is not None:
        assert factor.value == exact_gap
    assert factor.measured
    assert factor.points == points
    assert factor.max_points == 15


def test_overfitting_gap_is_taken_against_the_final_loss_when_no_training_loss_at_validation_is_given():
    factor = scalar(initial_loss=20.0, final_loss=10.0, validation_loss=11.0).factors["overfitting"]
    assert factor.value == 0.1
    assert factor.points == 10


def test_overfitting_is_not_measured_without_a_validation_loss():
    analysis = scalar()
    assert not analysis.factors["overfitting"].measured
    assert any(s.category is Category.OVERFITTING and s.priority is Priority.LOW for s in analysis.suggestions)


# --- efficiency: e = (initial - final) / epochs; e > 0.1 -> 10, e > 0.05 -> 7, else 3 -------------------

EFFICIENCY_CASES = [
    # (epochs_completed with initial 10 and final 2, exact e or None, points)
    (80.0, 0.1, 7),  # 8 / 80 == 0.1 exactly: not "above 0.1"
    (80.0 - 1e-6, None, 10),  # just above 0.1
    (160.0, 0.05, 3),  # exactly 0.05
    (160.0 - 1e-6, None, 7),  # just above 0.05
    (1.0, 8.0, 10),
    (1000.0, 0.008, 3),
]


@pytest.mark.parametrize("epochs, exact_e, points", EFFICIENCY_CASES)
def test_efficiency_points_at_every_boundary(epochs, exact_e, points):
    factor = scalar(epochs_completed=epochs).factors["efficiency"]
    if exact_e is not None:
        assert factor.value == exact_e
    assert factor.measured
    assert factor.points == points
    assert factor.max_points == 10


def test_efficiency_of_a_rising_loss_earns_the_minimum():
    assert scalar(final_loss=12.0, epochs_completed=2.0).factors["efficiency"].points == 3


def test_efficiency_is_not_measured_without_epochs():
    assert not scalar().factors["efficiency"].measured


# --- the total: 100 points in all, rescaled over the measured factors ----------------------------------


def test_the_five_factors_are_worth_100_points():
    factors = scalar().factors
    assert tuple(factors) == FACTOR_NAMES
    assert {name: f.max_points for name, f in factors.items()} == {
        "loss_reduction": 30, "convergence": 25, "stability": 20, "overfitting": 15, "efficiency": 10,
    }


def test_with_every_factor_measured_the_score_is_the_sum_of_points():
    # 25 (r = 0.8) + 10 (not converged) + 5 (unstable) + 10 (g = 0.1) + 3 (e = 0.05)
    analysis = scalar(final_loss=2.0, convergence_achieved=False, gradient_norm_stable=False,
                      validation_loss=11.0, train_loss_at_validation=10.0, epochs_completed=160.0)
    assert analysis.quality_score == 53.0


def test_with_overfitting_unmeasured_the_score_is_rescaled_over_85_points():
    # 25 (r = 0.8) + 25 (converged) + 20 (stable) + 10 (e = 4) = 80 of 85 available -> 94.1
    analysis = scalar(final_loss=2.0, convergence_achieved=True, gradient_norm_stable=True, epochs_completed=2.0)
    assert not analysis.factors["overfitting"].measured
    assert analysis.quality_score == 94.1
    assert analysis.metrics_summary["factors_measured"] == 4


def test_with_only_loss_reduction_measured_the_score_is_its_share_of_30():
    assert scalar(final_loss=2.0).quality_score == 83.3  # 25 of 30
    assert scalar(final_loss=1.0).quality_score == 100.0  # 30 of 30
    assert scalar(final_loss=8.0).quality_score == 16.7  # 5 of 30


def test_an_unmeasured_factor_never_earns_points_and_asks_for_what_was_missing():
    analysis = scalar(final_loss=2.0, convergence_achieved=True)  # stability, overfitting, efficiency unknown
    assert analysis.quality_score == round(100 * (25 + 25) / (30 + 25), 1)
    low = {s.category for s in analysis.suggestions if s.priority is Priority.LOW}
    assert {Category.STABILITY, Category.OVERFITTING, Category.EFFICIENCY} <= low


def test_a_result_with_nothing_measurable_is_refused():
    with pytest.raises(ValueError, match="nothing could be measured"):
        scalar(initial_loss=0.0, final_loss=0.0)


# --- overall assessment by score ------------------------------------------------------------------------

POINT_INPUTS = {
    "loss_reduction": {30: {"final_loss": 1.0}, 25: {"final_loss": 2.0}, 10: {"final_loss": 6.0},
                       5: {"final_loss": 8.0}},
    "convergence": {25: {"convergence_achieved": True}, 10: {"convergence_achieved": False}},
    "stability": {20: {"gradient_norm_stable": True}, 5: {"gradient_norm_stable": False}},
    "overfitting": {15: {"validation_loss": 10.0}, 10: {"validation_loss": 11.0}, 0: {"validation_loss": 13.0}},
}
LOSS_PER_EPOCH = {10: 1.0, 7: 0.075, 3: 0.01}  # efficiency points -> a loss-per-epoch inside that row


def result_with_points(efficiency: int, **points: int) -> dict:
    """TrainingResult fields that earn the given points per factor (all five measured)."""
    fields = {"initial_loss": INITIAL, "train_loss_at_validation": 10.0}
    for name, p in points.items():
        fields.update(POINT_INPUTS[name][p])
    fields["epochs_completed"] = (INITIAL - fields["final_loss"]) / LOSS_PER_EPOCH[efficiency]
    return fields


ASSESSMENT_CASES = [
    # (points per factor, score, assessment)
    (dict(loss_reduction=30, convergence=25, stability=20, overfitting=15, efficiency=10), 100.0, "Excellent"),
    (dict(loss_reduction=30, convergence=25, stability=20, overfitting=0, efficiency=10), 85.0, "Excellent"),
    (dict(loss_reduction=30, convergence=25, stability=20, overfitting=0, efficiency=7), 82.0, "Good"),
    (dict(loss_reduction=30, convergence=25, stability=5, overfitting=0, efficiency=10), 70.0, "Good"),
    (dict(loss_reduction=30, convergence=25, stability=5, overfitting=0, efficiency=7), 67.0, "Fair"),
    (dict(loss_reduction=25, convergence=10, stability=5, overfitting=0, efficiency=10), 50.0, "Fair"),
    (dict(loss_reduction=30, convergence=10, stability=5, overfitting=0, efficiency=3), 48.0, "Poor"),
    (dict(loss_reduction=5, convergence=10, stability=5, overfitting=0, efficiency=3), 23.0, "Poor"),
]


@pytest.mark.parametrize("points, score, assessment", ASSESSMENT_CASES)
def test_overall_assessment_bands_at_85_70_and_50(points, score, assessment):
    analysis = analyze_training_quality(TrainingResult(**result_with_points(**points)))
    assert {name: f.points for name, f in analysis.factors.items()} == points
    assert analysis.quality_score == score
    assert analysis.overall_assessment.startswith(assessment)


# --- the product specification's example ---------------------------------------------------------------


@pytest.fixture
def spec_example() -> QualityAnalysis:
    return analyze_training_quality(TrainingResult(
        final_loss=0.35, initial_loss=2.1, epochs_completed=3, total_steps=1000,
        convergence_achieved=True, gradient_norm_stable=True,
    ))


def test_spec_example_scores_full_marks_over_the_measured_factors(spec_example):
    # r = 83.3% -> 30, converged 25, stable 20, 0.583 per epoch -> 10; overfitting not measured: 85/85
    assert 0 <= spec_example.quality_score <= 100
    assert spec_example.quality_score == 100.0
    assert spec_example.overall_assessment == "Excellent - ready to use"
    assert spec_example.metrics_summary["loss_reduction_pct"] == 83.33


def test_spec_example_serializes_to_versioned_json(spec_example):
    data = json.loads(json.dumps(spec_example.to_dict(), allow_nan=False))
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data["factors"]) == set(FACTOR_NAMES)
    assert data["factors"]["overfitting"] == {
        "points": None, "max_points": 15, "measured": False, "value": None,
        "explanation": "not measured: no eval loss was logged",
    }


def test_spec_example_markdown_shows_every_factor(spec_example):
    text = render_markdown(spec_example)
    assert text.startswith("# Training quality: 100/100")
    for title in ("Loss reduction", "Convergence", "Stability", "Overfitting", "Efficiency"):
        assert f"| {title} |" in text
    assert "| Overfitting | n/a (of 15) |" in text
