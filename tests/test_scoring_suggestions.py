"""Properties of what the analysis writes: suggested values always lie in their parameter's valid range,
and every number reads naturally ("rose 9.5%", never "fell -9.5%"), for any params and any history."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from histories import decaying, evals_of, flat, frame, rising_tail, still_falling
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import QualityAnalysis, TrainingResult, analyze_history, analyze_training_quality
from scoring.params import ALIASES
from scoring.report import render_markdown

EXAMPLES = settings(max_examples=100, deadline=None)


# --- what a valid value is, per parameter (independent of the code under test) --------------------------------

def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _positive_int(value) -> bool:
    number = _number(value)
    return number is not None and number >= 1 and float(number).is_integer()


VALID = {
    "learning_rate": lambda v: (x := _number(v)) is not None and x > 0,
    "lora_dropout": lambda v: (x := _number(v)) is not None and 0 <= x < 1,
    "warmup_ratio": lambda v: (x := _number(v)) is not None and 0 <= x <= 1,
    "warmup_steps": lambda v: (x := _number(v)) is not None and x >= 0 and x.is_integer(),
    "weight_decay": lambda v: (x := _number(v)) is not None and x >= 0,
    "max_grad_norm": lambda v: (x := _number(v)) is not None and x > 0,
    "lora_r": _positive_int,
    "lora_alpha": _positive_int,
    "epochs": lambda v: (x := _number(v)) is not None and x > 0,
    "max_steps": _positive_int,
    "load_best_model_at_end": lambda v: v in (True, "True"),
}
KNOB_OF = {alias: knob for knob, aliases in ALIASES.items() for alias in aliases}


# --- random params: valid, odd and extreme values, as strings under any of their names ------------------------

PARAM_VALUES = {
    "learning_rate": ["2e-4", "1e-3", "5e-5", "1e-9", "10", "1", "0", "-1e-3", "1e-320", "1.7e308", "nan", "inf",
                      "abc"],
    "lora_dropout": ["0", "0.0", "0.05", "0.1", "0.45", "0.5", "0.9", "0.95", "0.96", "0.99", "0.999", "1", "1.5",
                     "-0.1", "nan", ""],
    "warmup_ratio": ["0", "0.0", "0.1", "0.5", "1", "1.5", "-0.1", "x"],
    "warmup_steps": ["0", "10", "500", "-5"],
    "weight_decay": ["0", "0.0", "0.01", "0.05", "0.1", "0.5", "10", "-0.1"],
    "max_grad_norm": ["1.0", "0.3", "0", "-1", "1e-9", "1e9", "inf"],
    "lora_r": ["1", "8", "16", "64", "0", "0.5", "3.7", "-4", "1e6", "1e300"],
    "lora_alpha": ["1", "16", "32", "0", "-8"],
    "epochs": ["1", "2", "3.0", "0.3", "0.001", "0", "-1", "1e300", "1.7e308"],
    "max_steps": ["-1", "0", "1", "2", "100", "2.5", "1e300", "1.7e308"],
    "num_labels": ["2", "3", "10", "1", "0"],
}


@st.composite
def run_params(draw) -> dict[str, str]:
    params = {}
    for knob in draw(st.lists(st.sampled_from(sorted(PARAM_VALUES)), unique=True, max_size=len(PARAM_VALUES))):
        name = draw(st.sampled_from(ALIASES.get(knob, (knob,))))
        values = PARAM_VALUES[knob]
        params[name] = draw(st.sampled_from(values) | st.floats(allow_nan=False, width=32).map(repr)
                            if knob != "num_labels" else st.sampled_from(values))
    return params


# --- random histories: falling, plateau, still falling, rising, flat, noisy, spiky, broken ---------------------

SHAPES = ("falling", "plateau", "still_falling", "rising", "rising_tail", "flat", "noisy", "spiky", "nan", "collapse")


@st.composite
def histories(draw) -> pd.DataFrame:
    n = draw(st.integers(min_value=5, max_value=300))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    rng = np.random.default_rng(seed)
    shape = draw(st.sampled_from(SHAPES))
    level = draw(st.sampled_from([0.01, 0.5, 2.0, 50.0]))
    noise = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5]))
    steps = np.arange(1, n + 1)
    t = np.linspace(0.0, 1.0, n)
    if shape == "falling":
        loss = level * (0.1 + 0.9 * np.exp(-draw(st.floats(1.0, 30.0)) * t))
    elif shape == "plateau":
        loss = decaying(n, start=level, floor=level * 0.3, noise=0.0, seed=seed)[1]
    elif shape == "still_falling":
        loss = still_falling(n, start=level, scale=n * draw(st.floats(0.3, 3.0)))[1]
    elif shape == "rising":
        loss = level * (1.0 + draw(st.floats(0.01, 3.0)) * t)
    elif shape == "rising_tail":
        loss = level * rising_tail(n, from_step=max(1, n * 3 // 4), slope=draw(st.floats(0.001, 0.05)))[1]
    elif shape == "flat":
        loss = flat(n, level=level, noise=0.0)[1]
    elif shape == "noisy":
        loss = level * np.exp(np.cumsum(0.1 * rng.standard_normal(n)))
    elif shape == "spiky":
        loss = decaying(n, start=level, floor=level * 0.2, noise=0.0)[1]
        loss[rng.integers(0, n, size=draw(st.integers(1, 6)))] *= draw(st.floats(2.0, 50.0))
    elif shape == "nan":
        loss = decaying(n, start=level, floor=level * 0.2, noise=0.0)[1]
        loss[rng.integers(n // 2, n, size=draw(st.integers(1, 3)))] = draw(st.sampled_from([np.nan, np.inf, 0.0]))
    else:  # collapse: falls, then blows up
        loss = np.where(t < 0.5, level * (1 - 0.5 * t), level * 20 * t)
    loss = loss * (1 + noise * rng.standard_normal(n))
    metrics = {"loss": (steps, loss)}
    evals = draw(st.sampled_from(["none", "follows", "overfits", "rises", "gap"]))
    if evals != "none" and n >= 20:
        smooth = decaying(n, start=level, floor=level * 0.3, noise=0.0)
        if evals == "follows":
            metrics["eval_loss"] = evals_of(smooth, every=max(1, n // 10), scale=1.05)
        elif evals == "gap":
            metrics["eval_loss"] = evals_of((steps, loss), every=max(1, n // 10), scale=draw(st.floats(0.5, 3.0)))
        else:
            eval_steps = steps[max(1, n // 10) - 1 :: max(1, n // 10)]
            u = np.linspace(0.0, 1.0, len(eval_steps))
            bend = 0.0 if evals == "rises" else 0.3
            metrics["eval_loss"] = (eval_steps, level * (1 + 2 * (u - bend) ** 2 + (u if evals == "rises" else 0)))
    grads = draw(st.sampled_from(["none", "steady", "spiky", "nan", "negative"]))
    if grads != "none":
        grad = draw(st.sampled_from([0.01, 1.0, 30.0])) * (1 + 0.05 * rng.standard_normal(n))
        if grads == "spiky":
            grad[rng.integers(0, n, size=draw(st.integers(1, 8)))] *= 20
        elif grads == "nan":
            grad[rng.integers(0, n, size=draw(st.integers(1, 8)))] = np.nan
        elif grads == "negative":
            grad = -grad
        metrics["grad_norm"] = (steps, grad)
    if draw(st.booleans()):
        metrics["learning_rate"] = (steps, np.linspace(draw(st.sampled_from([1e-9, 2e-4, 1.0])), 0.0, n))
    if draw(st.booleans()):
        metrics["epoch"] = (steps, steps / n * draw(st.sampled_from([0.2, 1.0, 3.0, 50.0])))
    return frame(**metrics)


losses = st.floats(min_value=1e-4, max_value=1e4)


@st.composite
def training_results(draw) -> TrainingResult:
    """Final numbers only (the scalar API), including runs whose loss rose and eval losses far from train."""
    validation = draw(st.none() | losses)
    initial = draw(losses)
    return TrainingResult(
        final_loss=draw(losses | st.floats(min_value=0.5, max_value=2.0).map(lambda k: initial * k)),
        initial_loss=initial,
        epochs_completed=draw(st.none() | st.floats(min_value=0.01, max_value=100.0)),
        total_steps=draw(st.none() | st.integers(min_value=1, max_value=10**6)),
        convergence_achieved=draw(st.sampled_from([True, False, None])),
        gradient_norm_stable=draw(st.sampled_from([True, False, None])),
        validation_loss=validation,
        learning_rate=draw(st.none() | st.floats(min_value=1e-9, max_value=10.0)),
        hyperparameters=draw(run_params()),
    )


def analyses(history: pd.DataFrame, params: dict) -> QualityAnalysis | None:
    try:
        return analyze_history(history, params)
    except ValueError:  # no usable loss curve: refused, nothing written
        return None


# --- fault 2: every suggested value lies in its parameter's valid range ---------------------------------------


def assert_suggested_values_are_valid(analysis: QualityAnalysis) -> None:
    for s in analysis.suggestions:
        if s.parameter is None or s.suggested_value is None:
            continue
        knob = KNOB_OF.get(s.parameter, s.parameter)
        assert knob in VALID, f"no valid range known for suggested parameter {s.parameter!r}"
        assert VALID[knob](s.suggested_value), f"{s.parameter}={s.suggested_value!r} is out of range: {s.change}"
        shown = s.change.split(" -> ", 1)[1]  # what the user reads in "Change: `name: current -> suggested`"
        assert VALID[knob](shown), f"{s.parameter} shown as {shown!r} is out of range: {s.change}"
        current = s.change.split(": ", 1)[1].split(" -> ", 1)[0]
        assert shown != current, f"a change that changes nothing: {s.change}"


@EXAMPLES
@given(histories(), run_params())
def test_every_suggested_value_after_a_history_is_in_its_valid_range(history, params):
    analysis = analyses(history, params)
    if analysis is not None:
        assert_suggested_values_are_valid(analysis)


@EXAMPLES
@given(training_results())
def test_every_suggested_value_after_final_numbers_is_in_its_valid_range(result):
    assert_suggested_values_are_valid(analyze_training_quality(result))


def overfitting_history() -> pd.DataFrame:
    loss = still_falling(200)
    return frame(loss=loss, eval_loss=(loss[0][19::20], [1.6, 1.3, 1.15, 1.1, 1.13, 1.18, 1.24, 1.3, 1.37, 1.45]))


@pytest.mark.parametrize("dropout, expected", [
    ("0.05", "lora_dropout: 0.05 -> 0.1"),
    ("0.48", "lora_dropout: 0.48 -> 0.5"),  # capped: more than half the LoRA inputs dropped is not a remedy
    ("0.99", "weight_decay: unset -> 0.01"),  # dropout already at its edge: regularize with weight decay
    ("1.5", "lora_dropout: 1.5 -> 0.1"),  # an invalid value is replaced by a valid one
])
def test_more_dropout_stays_below_one_and_gives_way_to_weight_decay_at_the_edge(dropout, expected):
    analysis = analyze_history(overfitting_history(), params={"lora_dropout": dropout})
    changes = [s.change for s in analysis.suggestions if s.change and "load_best" not in s.change]
    assert changes == [expected]


def test_no_regularization_value_is_suggested_when_dropout_and_weight_decay_are_both_high():
    analysis = analyze_history(overfitting_history(), params={"lora_dropout": "0.99", "weight_decay": "0.5"})
    regularize = [s for s in analysis.suggestions if "regularization" in s.message]
    assert len(regularize) == 1 and regularize[0].change is None


# --- fault 3: numbers read naturally; no double signs ---------------------------------------------------------

DOUBLE_SIGNS = re.compile(r"(fell|rose|dropped|moved|increased|decreased) -|--|\+-")
TABLE_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def texts(analysis: QualityAnalysis) -> list[str]:
    out = [f.explanation for f in analysis.factors.values()]
    out += [v.reason for v in analysis.verdicts.values()]
    for s in analysis.suggestions:
        out += [s.message, s.change or ""]
    out += [line for line in render_markdown(analysis).splitlines() if not TABLE_RULE.match(line.strip())]
    return out


def assert_reads_naturally(analysis: QualityAnalysis) -> None:
    for text in texts(analysis):
        assert not DOUBLE_SIGNS.search(text), text


@EXAMPLES
@given(histories(), run_params())
def test_no_text_after_a_history_has_a_double_sign(history, params):
    analysis = analyses(history, params)
    if analysis is not None:
        assert_reads_naturally(analysis)


@EXAMPLES
@given(training_results())
def test_no_text_after_final_numbers_has_a_double_sign(result):
    assert_reads_naturally(analyze_training_quality(result))


def test_a_loss_that_rose_is_said_to_have_risen():
    rose = analyze_training_quality(TrainingResult(final_loss=1.095, initial_loss=1.0, epochs_completed=2.0))
    underfit = [s.message for s in rose.suggestions if s.category.value == "underfitting"]
    assert underfit and "rose 9.5%" in underfit[0] and "fell" not in underfit[0]
    assert "loss rose 0.0475 per epoch" in rose.factors["efficiency"].explanation
    fell = analyze_training_quality(TrainingResult(final_loss=0.95, initial_loss=1.0))
    underfit = [s.message for s in fell.suggestions if s.category.value == "underfitting"]
    assert "fell 5.0%" in underfit[0]
