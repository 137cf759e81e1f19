"""Bad input fails early with a ValueError that names the field; the decided non-errors stay non-errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from histories import decaying, flat, frame, good_run, steady_grad

import scoring.thresholds
from scoring import (
    Category,
    ImprovementSuggestion,
    Priority,
    Thresholds,
    TrainingResult,
    analyze_history,
    analyze_training_quality,
)
from scoring.report import render_markdown

VALID = dict(final_loss=0.35, initial_loss=2.1, epochs_completed=3, total_steps=1000,
             convergence_achieved=True, gradient_norm_stable=True)


def result(**changes) -> TrainingResult:
    return TrainingResult(**{**VALID, **changes})


# --- TrainingResult ---------------------------------------------------------------------------------------

FLOAT_FIELDS = ["final_loss", "initial_loss", "validation_loss", "train_loss_at_validation", "epochs_completed",
                "learning_rate"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_a_non_finite_scalar_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainingResult\.{field} .*finite"):
        result(**{field: value})


@pytest.mark.parametrize("value", ["0.5", None, [1.0], True])
@pytest.mark.parametrize("field", ["final_loss", "initial_loss"])
def test_a_required_loss_must_be_a_number(field, value):
    with pytest.raises(ValueError, match=rf"TrainingResult\.{field} must be a number"):
        result(**{field: value})


@pytest.mark.parametrize("value", [0, -1, -0.5, 0.0])
def test_epochs_completed_must_be_positive(value):
    with pytest.raises(ValueError, match=r"TrainingResult\.epochs_completed must be positive"):
        result(epochs_completed=value)


@pytest.mark.parametrize("value", [0, -10, 1.5, 1000.0, True, "1000"])
def test_total_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"TrainingResult\.total_steps must be a positive integer"):
        result(total_steps=value)


@pytest.mark.parametrize("value", [0, -2e-4])
def test_learning_rate_must_be_positive(value):
    with pytest.raises(ValueError, match=r"TrainingResult\.learning_rate must be positive"):
        result(learning_rate=value)


@pytest.mark.parametrize("value", [1, 0, "yes", "True", 1.0])
@pytest.mark.parametrize("field", ["convergence_achieved", "gradient_norm_stable"])
def test_a_flag_must_be_true_false_or_none(field, value):
    with pytest.raises(ValueError, match=rf"TrainingResult\.{field} must be True, False or None"):
        result(**{field: value})


@pytest.mark.parametrize("field", ["loss_history", "eval_loss_history", "gradient_norms"])
def test_a_history_must_hold_numbers(field):
    with pytest.raises(ValueError, match=rf"TrainingResult\.{field} must be a sequence of numbers"):
        result(**{field: [1.0, "high", 0.5]})


def test_hyperparameters_must_be_a_mapping():
    with pytest.raises(ValueError, match=r"TrainingResult\.hyperparameters must be a mapping"):
        result(hyperparameters=[("learning_rate", 2e-4)])


def test_a_nan_inside_a_loss_history_is_not_an_input_error():
    # NaN is refused as a scalar, but in a history it is evidence: a stability failure.
    analysis = analyze_training_quality(result(gradient_norm_stable=None,
                                               loss_history=[2.0, 1.5, math.nan, 1.0, 0.8, 0.6]))
    assert analysis.factors["stability"].points == 5


# --- ImprovementSuggestion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["speed", "", None, "Convergence"])
def test_a_suggestion_needs_a_known_category(category):
    with pytest.raises(ValueError, match=r"ImprovementSuggestion\.category must be one of convergence, "
                                         r"overfitting, underfitting, efficiency, stability"):
        ImprovementSuggestion(category, Priority.HIGH, "message")


@pytest.mark.parametrize("priority", ["urgent", "", None, 1, "HIGH"])
def test_a_suggestion_needs_a_known_priority(priority):
    with pytest.raises(ValueError, match=r"ImprovementSuggestion\.priority must be one of high, medium, low"):
        ImprovementSuggestion(Category.STABILITY, priority, "message")


def test_a_suggestion_needs_a_message():
    with pytest.raises(ValueError, match=r"ImprovementSuggestion\.message must not be empty"):
        ImprovementSuggestion(Category.STABILITY, Priority.LOW, "")


def test_a_suggestion_accepts_category_and_priority_by_their_names():
    s = ImprovementSuggestion("overfitting", "medium", "add dropout", "lora_dropout", 0.05, 0.1)
    assert (s.category, s.priority) == (Category.OVERFITTING, Priority.MEDIUM)
    assert s.change == "lora_dropout: 0.05 -> 0.1"


# --- Thresholds ------------------------------------------------------------------------------------------------

FRACTIONS = list(scoring.thresholds.FRACTIONS)
ALL_THRESHOLDS = [f.name for f in dataclasses.fields(Thresholds)]


@pytest.mark.parametrize("value", [0, -0.1])
@pytest.mark.parametrize("name", ALL_THRESHOLDS)
def test_every_threshold_must_be_positive(name, value):
    with pytest.raises(ValueError, match=rf"Thresholds\.{name} must be positive"):
        Thresholds(**{name: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "0.1", None])
@pytest.mark.parametrize("name", ALL_THRESHOLDS)
def test_every_threshold_must_be_a_finite_number(name, value):
    with pytest.raises(ValueError, match=rf"Thresholds\.{name} must be a finite number"):
        Thresholds(**{name: value})


@pytest.mark.parametrize("value", [1, 1.0, 1.5])
@pytest.mark.parametrize("name", FRACTIONS)
def test_a_fraction_threshold_must_be_below_1(name, value):
    with pytest.raises(ValueError, match=rf"Thresholds\.{name} is a fraction and must be below 1"):
        Thresholds(**{name: value})


def test_the_default_thresholds_are_valid_and_a_fraction_just_below_1_is_accepted():
    Thresholds()
    Thresholds(**{name: 0.999 for name in FRACTIONS})


# --- histories: refused --------------------------------------------------------------------------------------


def loss_only(n=50):
    return frame(loss=decaying(n))


@pytest.mark.parametrize("history", [None, {"key": ["loss"], "step": [1], "value": [1.0]}, [("loss", 1, 1.0)],
                                     np.zeros((3, 3))], ids=["None", "dict", "list", "array"])
def test_a_history_must_be_a_dataframe(history):
    with pytest.raises(ValueError, match="history must be a pandas DataFrame"):
        analyze_history(history)


@pytest.mark.parametrize("column", ["key", "step", "value"])
def test_a_history_missing_a_column_is_refused_naming_it(column):
    with pytest.raises(ValueError, match=rf"history is missing column\(s\) {column}"):
        analyze_history(loss_only().drop(columns=[column]))


def test_an_empty_history_is_refused():
    with pytest.raises(ValueError, match="history is empty"):
        analyze_history(pd.DataFrame(columns=["key", "step", "value"]))


def test_a_history_with_a_single_loss_point_is_refused():
    with pytest.raises(ValueError, match="no training loss curve found"):
        analyze_history(frame(loss=([1], [2.0])))


def test_a_history_whose_loss_is_all_nan_is_refused():
    steps = np.arange(1, 51)
    with pytest.raises(ValueError, match=r"training loss history has 0 finite point\(s\)"):
        analyze_history(frame(loss=(steps, np.full(50, np.nan)), grad_norm=steady_grad(50)))


def test_a_non_numeric_step_is_refused():
    history = loss_only().astype({"step": object})
    history.loc[3, "step"] = "three"
    with pytest.raises(ValueError, match="step that is not a number"):
        analyze_history(history)


def test_an_override_naming_a_metric_that_was_not_logged_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"metric 'my_loss' given for train_loss is not in this run"):
        analyze_history(loss_only(), metric_names={"train_loss": "my_loss"})


def test_an_override_for_an_unknown_role_is_refused_naming_the_role():
    with pytest.raises(ValueError, match=r"unknown metric role\(s\) loss_curve; the roles are train_loss"):
        analyze_history(loss_only(), metric_names={"loss_curve": "loss"})


def test_a_history_without_any_training_loss_names_what_was_logged():
    with pytest.raises(ValueError, match=r"logged metrics: accuracy"):
        analyze_history(frame(accuracy=decaying(20)))


# --- histories: decided behaviours that are not errors ------------------------------------------------------


def test_a_repeated_step_keeps_the_last_logged_value():
    history = good_run()
    last_step = int(history.loc[history["key"] == "loss", "step"].max())
    earlier = pd.DataFrame({"key": ["loss"], "step": [last_step], "value": [99.0]})
    # the stray value is logged first, the run's own value after it
    logged_twice = pd.concat([earlier, history], ignore_index=True)
    analysis = analyze_history(logged_twice)
    own_value = float(history.loc[(history["key"] == "loss") & (history["step"] == last_step), "value"].iloc[0])
    assert analysis.metrics_summary["final_loss_raw"] == own_value
    assert analysis.to_dict() == analyze_history(history).to_dict()


def test_a_repeated_step_logged_later_replaces_the_earlier_value():
    history = good_run()
    last_step = int(history.loc[history["key"] == "loss", "step"].max())
    later = pd.DataFrame({"key": ["loss"], "step": [last_step], "value": [0.123]})
    analysis = analyze_history(pd.concat([history, later], ignore_index=True))
    assert analysis.metrics_summary["final_loss_raw"] == 0.123


def test_unordered_steps_are_analyzed_as_if_sorted():
    history = good_run()
    shuffled = history.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert not shuffled["step"].is_monotonic_increasing
    assert analyze_history(shuffled).to_dict() == analyze_history(history).to_dict()


def test_a_loss_below_zero_throughout_leaves_loss_reduction_unmeasured():
    steps, values = decaying(200, start=-0.5, floor=-2.0)
    analysis = analyze_history(frame(loss=(steps, values), grad_norm=steady_grad(200)))
    assert not analysis.factors["loss_reduction"].measured
    assert "relative reduction is undefined" in analysis.factors["loss_reduction"].explanation
    assert 0 <= analysis.quality_score <= 100


def test_a_loss_that_crosses_zero_still_gets_a_valid_analysis():
    steps, values = decaying(200, start=2.0, floor=-1.0, noise=0.0)
    analysis = analyze_history(frame(loss=(steps, values), grad_norm=steady_grad(200)))
    assert analysis.factors["loss_reduction"].measured
    assert analysis.factors["loss_reduction"].points == 30  # r > 1: the loss fell by more than its start
    assert 0 <= analysis.quality_score <= 100


def test_a_non_numeric_value_is_read_as_nan_and_counts_as_a_stability_failure():
    history = good_run().astype({"value": object})
    row = history.index[(history["key"] == "loss") & (history["step"] == 150)][0]
    history.loc[row, "value"] = "nan?"
    analysis = analyze_history(history)
    assert analysis.factors["stability"].points == 5
    assert analysis.events["nonfinite_steps"] == [150]


def test_a_scalar_result_with_a_non_positive_initial_loss_is_scored_on_the_other_factors():
    analysis = analyze_training_quality(result(initial_loss=0.0, final_loss=-0.5))
    assert not analysis.factors["loss_reduction"].measured
    assert analysis.factors["convergence"].points == 25


def test_a_loss_history_longer_than_total_steps_keeps_every_point():
    analysis = analyze_training_quality(TrainingResult(final_loss=0.5, initial_loss=1.0, total_steps=1,
                                                       loss_history=[1.0, 0.5, math.nan]))
    assert analysis.metrics_summary["logged_points"] == 3


def test_an_absurd_learning_rate_param_still_gives_a_json_safe_analysis():
    # Doubling 1e308 overflows to inf; the advice must not crash on it, must not suggest an invalid (or any
    # higher) learning rate, and the JSON form must stay strict.
    analysis = analyze_history(frame(loss=flat(200)), params={"learning_rate": "1e308"})
    raise_lr = [s for s in analysis.suggestions if s.category is Category.UNDERFITTING][0]
    assert "raise the learning rate" in raise_lr.message and raise_lr.change is None
    json.dumps(analysis.to_dict(), allow_nan=False)
    render_markdown(analysis)
