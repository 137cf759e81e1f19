"""Invariants of the score (Property 13 and monotonic sanity) and of the history analysis, for any input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import (
    REQUIRED_SUMMARY_FIELDS,
    Category,
    Priority,
    QualityAnalysis,
    TrainingResult,
    analyze_history,
    analyze_training_quality,
)
from scoring.report import render_markdown

EXAMPLES = settings(max_examples=150, deadline=None)

losses = st.floats(min_value=1e-4, max_value=1e4, allow_nan=False, allow_infinity=False)
flags = st.sampled_from([True, False, None])


@st.composite
def training_results(draw) -> TrainingResult:
    """Any valid TrainingResult with sane values; optional fields are sometimes left unmeasured."""
    validation = draw(st.none() | losses)
    return TrainingResult(
        final_loss=draw(losses),
        initial_loss=draw(losses),
        epochs_completed=draw(st.none() | st.floats(min_value=0.01, max_value=100.0)),
        total_steps=draw(st.none() | st.integers(min_value=1, max_value=10**6)),
        convergence_achieved=draw(flags),
        gradient_norm_stable=draw(flags),
        validation_loss=validation,
        train_loss_at_validation=draw(st.none() | losses) if validation is not None else None,
        learning_rate=draw(st.none() | st.floats(min_value=1e-7, max_value=1.0)),
        hyperparameters=draw(st.fixed_dictionaries({}, optional={
            "learning_rate": st.floats(min_value=1e-7, max_value=1.0),
            "epochs": st.integers(min_value=1, max_value=20),
            "lora_r": st.sampled_from([4, 8, 16, 64]),
            "lora_dropout": st.sampled_from([0.0, 0.05, 0.1]),
            "num_labels": st.integers(min_value=2, max_value=100),
        })),
    )


def assert_valid(analysis: QualityAnalysis) -> None:
    assert 0 <= analysis.quality_score <= 100
    json.dumps(analysis.to_dict(), allow_nan=False)


# --- Property 13: any valid result gets a well-formed analysis ----------------------------------------------


@EXAMPLES
@given(training_results())
def test_any_valid_result_scores_between_0_and_100(result):
    analysis = analyze_training_quality(result)
    assert 0 <= analysis.quality_score <= 100
    assert analysis.overall_assessment


@EXAMPLES
@given(training_results())
def test_every_suggestion_is_well_formed_and_the_list_is_sorted_by_priority(result):
    suggestions = analyze_training_quality(result).suggestions
    for s in suggestions:
        assert isinstance(s.category, Category)
        assert isinstance(s.priority, Priority)
        assert s.message.strip()
    ranks = [s.priority.rank for s in suggestions]
    assert ranks == sorted(ranks)


@EXAMPLES
@given(training_results())
def test_the_metrics_summary_has_every_required_field(result):
    summary = analyze_training_quality(result).metrics_summary
    assert set(REQUIRED_SUMMARY_FIELDS) <= set(summary)


@EXAMPLES
@given(training_results())
def test_the_analysis_serializes_to_strict_json_and_markdown(result):
    analysis = analyze_training_quality(result)
    data = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    assert data["schema_version"]
    assert render_markdown(analysis).startswith("# Training quality:")


@EXAMPLES
@given(training_results())
def test_the_same_result_always_gives_the_same_analysis(result):
    assert analyze_training_quality(result).to_dict() == analyze_training_quality(result).to_dict()


# --- monotonic sanity: a strictly better run never scores lower ----------------------------------------------


def score(result: TrainingResult) -> float:
    return analyze_training_quality(result).quality_score


@EXAMPLES
@given(training_results(), st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_lower_final_loss_never_scores_lower(result, shrink):
    # The eval gap is held fixed (it is measured against the training loss at validation, given explicitly).
    if result.validation_loss is not None and result.train_loss_at_validation is None:
        result = dataclasses.replace(result, train_loss_at_validation=result.final_loss)
    better = dataclasses.replace(result, final_loss=result.final_loss * shrink)
    assert score(better) >= score(result)


@EXAMPLES
@given(training_results())
def test_converging_never_scores_lower_than_not_converging_or_not_knowing(result):
    converged = score(dataclasses.replace(result, convergence_achieved=True))
    assert converged >= score(dataclasses.replace(result, convergence_achieved=False))
    assert converged >= score(dataclasses.replace(result, convergence_achieved=None))


@EXAMPLES
@given(training_results())
def test_stable_gradients_never_score_lower_than_unstable_or_unknown(result):
    stable = score(dataclasses.replace(result, gradient_norm_stable=True))
    assert stable >= score(dataclasses.replace(result, gradient_norm_stable=False))
    assert stable >= score(dataclasses.replace(result, gradient_norm_stable=None))


@EXAMPLES
@given(training_results(), losses, st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_smaller_eval_gap_never_scores_lower(result, validation_loss, shrink):
    worse = dataclasses.replace(result, validation_loss=validation_loss)
    better = dataclasses.replace(result, validation_loss=validation_loss * shrink)
    assert score(better) >= score(worse)


# --- histories: any history is analyzed or refused with ValueError, nothing else -----------------------------

special_values = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, -1e30, 1e-30])
values = st.one_of(st.floats(min_value=-10, max_value=10), special_values)
KEYS = ["loss", "eval_loss", "grad_norm", "learning_rate", "epoch", "train_loss", "val_loss"]


@st.composite
def metric_histories(draw) -> pd.DataFrame:
    """A (key, step, value) history of 2-300 rows: noisy, constant, non-finite, repeated and unordered steps."""
    n = draw(st.integers(min_value=2, max_value=300))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    if "loss" not in keys and draw(st.booleans()):
        keys.append("loss")
    rows = []
    for key in keys:
        m = draw(st.integers(min_value=1, max_value=n))
        shape = draw(st.sampled_from(["random", "constant", "decaying"]))
        if shape == "constant":
            series = [draw(values)] * m
        elif shape == "decaying":
            series = list(2.0 * np.exp(-np.arange(m) / max(1, m / 4)))
            for i in draw(st.lists(st.integers(0, m - 1), max_size=5)):
                series[i] = draw(values)
        else:
            series = draw(st.lists(values, min_size=m, max_size=m))
        steps = list(range(1, m + 1))
        if draw(st.booleans()):  # repeated and out-of-order steps
            steps = draw(st.lists(st.integers(min_value=0, max_value=m), min_size=m, max_size=m))
        rows += [(key, s, v) for s, v in zip(steps, series)]
    return pd.DataFrame(rows, columns=["key", "step", "value"])


@settings(max_examples=200, deadline=None)
@given(metric_histories())
def test_any_history_is_analyzed_or_refused_with_a_value_error(history):
    try:
        analysis = analyze_history(history)
    except ValueError:
        return
    assert_valid(analysis)
    assert analysis.metric_names["train_loss"] in set(history["key"])
    render_markdown(analysis)


@EXAMPLES
@given(metric_histories())
def test_the_same_history_always_gives_the_same_analysis(history):
    try:
        first = analyze_history(history).to_dict()
    except ValueError:
        return
    assert analyze_history(history.copy()).to_dict() == first
