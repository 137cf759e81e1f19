"""The curve rules of docs/scoring.md, each on a realistic hand-built history of known shape.

The real-run benchmark (tests/test_real_runs.py) judges the same rules on published training runs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from histories import (
    decaying,
    evals_of,
    flat,
    frame,
    good_run,
    rising_tail,
    steady_grad,
    still_falling,
    with_values,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import (
    Category,
    Priority,
    QualityAnalysis,
    TrainingResult,
    analyze_history,
    analyze_training_quality,
)
from scoring.models import format_value
from scoring.plot import loss_curve_figure
from scoring.report import render_markdown
from scoring.rules import eval_rise
from scoring.thresholds import Thresholds

N = 200


def suggestions_of(analysis: QualityAnalysis, category: Category, priority: Priority | None = None):
    return [s for s in analysis.suggestions
            if s.category is category and (priority is None or s.priority is priority)]


def only(found: list):
    assert len(found) == 1, found
    return found[0]


# --- convergence: plateau, still falling, rising at the end -------------------------------------------------


def test_a_plateau_is_converged_and_says_where_it_started():
    analysis = analyze_history(frame(loss=decaying(N, rate=30.0)), params={"epochs": "4"})
    factor = analysis.factors["convergence"]
    assert factor.points == 25
    start = analysis.events["plateau_start_step"]
    assert start is not None and 1 < start < N / 2
    assert "so the run had converged" in factor.explanation
    assert f"flat from about step {start}" in factor.explanation


def test_a_plateau_before_half_of_the_run_suggests_fewer_steps():
    analysis = analyze_history(frame(loss=decaying(N, rate=30.0)), params={"epochs": "4"})
    fewer = only([s for s in suggestions_of(analysis, Category.EFFICIENCY) if "fewer steps" in s.message])
    assert fewer.priority is Priority.LOW
    assert f"step {analysis.events['plateau_start_step']}" in fewer.message
    assert fewer.parameter == "epochs" and fewer.current_value == 4
    assert 1 <= fewer.suggested_value < 4


def test_a_plateau_after_half_of_the_run_does_not_suggest_fewer_steps():
    analysis = analyze_history(good_run(), params={"epochs": "3"})
    assert analysis.factors["convergence"].points == 25
    assert analysis.events["plateau_start_step"] >= N / 2
    assert not [s for s in analysis.suggestions if "fewer steps" in s.message]


def test_a_still_falling_loss_has_not_converged_and_asks_for_more_epochs():
    analysis = analyze_history(frame(loss=still_falling(N)), params={"epochs": "2"})
    factor = analysis.factors["convergence"]
    assert factor.points == 10
    assert "loss still fell" in factor.explanation and "had not converged" in factor.explanation
    assert analysis.events["plateau_start_step"] is None
    longer = only(suggestions_of(analysis, Category.CONVERGENCE))
    assert longer.priority is Priority.HIGH
    assert "compute-bound" in longer.message and "Train longer" in longer.message
    assert longer.change == "epochs: 2 -> 3"


def test_a_still_falling_loss_with_max_steps_asks_for_more_steps():
    # Hugging Face's Trainer ignores num_train_epochs when max_steps is set, so the advice follows max_steps.
    analysis = analyze_history(frame(loss=still_falling(N)), params={"num_train_epochs": "2", "max_steps": "200"})
    assert only(suggestions_of(analysis, Category.CONVERGENCE)).change == "max_steps: 200 -> 300"


def test_a_loss_rising_at_the_end_has_not_converged_and_asks_for_a_lower_learning_rate():
    analysis = analyze_history(frame(loss=rising_tail(N)), params={"learning_rate": "2e-4"})
    factor = analysis.factors["convergence"]
    assert factor.points == 10
    assert "loss still rose" in factor.explanation
    lower = only(suggestions_of(analysis, Category.CONVERGENCE))
    assert lower.priority is Priority.HIGH
    assert "Lower the learning rate" in lower.message
    assert lower.change == "learning_rate: 2e-4 -> 1e-4"


def test_a_reported_flag_is_kept_even_when_the_history_disagrees():
    _, values = still_falling(N)
    analysis = analyze_training_quality(TrainingResult(
        final_loss=float(values[-1]), initial_loss=float(values[0]), convergence_achieved=True,
        loss_history=tuple(values)))
    assert analysis.factors["convergence"].points == 25
    assert analysis.factors["convergence"].explanation == "reported as converged"


def test_a_loss_history_in_a_training_result_fills_the_unknown_flags():
    _, values = still_falling(N)
    analysis = analyze_training_quality(TrainingResult(
        final_loss=float(values[-1]), initial_loss=float(values[0]), loss_history=tuple(values)))
    assert analysis.factors["convergence"].points == 10
    assert "had not converged" in analysis.factors["convergence"].explanation


def test_too_few_points_leave_convergence_unmeasured():
    analysis = analyze_history(frame(loss=([1, 2, 3, 4], [2.0, 1.5, 1.2, 1.0])))
    assert not analysis.factors["convergence"].measured
    assert "at least 8" in analysis.factors["convergence"].explanation
    assert analysis.verdicts["converged"].answer == "cannot_tell"


# --- stability: non-finite values, breakdown, divergence, spikes ------------------------------------------------


def test_nan_in_the_loss_is_a_stability_failure_and_a_lone_inf_gradient_norm_is_reported_beside_it():
    loss = with_values(decaying(N), [121], np.nan)
    grad = with_values(steady_grad(N), [131], np.inf)
    analysis = analyze_history(frame(loss=loss, grad_norm=grad))
    factor = analysis.factors["stability"]
    assert factor.points == 5
    assert "non-finite loss at step(s) 121" in factor.explanation
    assert "1 non-finite gradient norm(s) with a finite loss at step(s) 131" in factor.explanation
    assert analysis.events["nonfinite_steps"] == [121, 131]
    assert analysis.events["skipped_steps"] == [131]
    assert analysis.verdicts["unstable"].answer == "yes" and analysis.verdicts["unstable"].confidence == "high"
    first = analysis.suggestions[0]
    assert first.category is Category.STABILITY and first.priority is Priority.HIGH
    assert "NaN/inf appeared at step 121" in first.message


def test_nan_in_the_loss_alone_is_a_failure_even_without_a_gradient_norm():
    analysis = analyze_history(frame(loss=with_values(decaying(N), [150], np.nan)))
    assert analysis.factors["stability"].measured
    assert analysis.factors["stability"].points == 5


def test_without_a_gradient_norm_a_clean_loss_leaves_stability_unmeasured():
    analysis = analyze_history(frame(loss=decaying(N)))
    assert not analysis.factors["stability"].measured
    assert any("log the gradient norm" in s.message for s in suggestions_of(analysis, Category.STABILITY, Priority.LOW))


def hugging_face_breakdown(from_step=151):
    """HF's Trainer logs loss 0.0 beside a NaN grad_norm once the numbers broke down."""
    steps = np.arange(from_step, N + 1)
    loss = with_values(decaying(N), steps, 0.0)
    grad = with_values(steady_grad(N), steps, np.nan)
    return frame(loss=loss, grad_norm=grad)


def test_a_zero_loss_beside_a_nan_gradient_norm_is_explained_as_numerical_breakdown():
    analysis = analyze_history(hugging_face_breakdown())
    factor = analysis.factors["stability"]
    assert factor.points == 5
    assert "a loss of exactly 0.0 beside a NaN gradient norm at step(s) 151" in factor.explanation
    assert "numerical breakdown, not a perfect fit" in factor.explanation
    assert analysis.events["nonfinite_steps"] == list(range(151, N + 1))


def test_a_zero_loss_beside_a_finite_gradient_norm_is_not_a_breakdown():
    steps = np.arange(151, N + 1)
    analysis = analyze_history(frame(loss=with_values(decaying(N), steps, 0.0), grad_norm=steady_grad(N)))
    assert "numerical breakdown" not in analysis.factors["stability"].explanation


def test_a_breakdown_does_not_earn_loss_reduction_points_as_a_perfect_fit():
    analysis = analyze_history(hugging_face_breakdown())
    assert analysis.metrics_summary["final_loss"] > 0
    assert "100.0% reduction" not in analysis.factors["loss_reduction"].explanation


def diverging(n=N, from_step=120, to_factor=5.0):
    steps, values = decaying(n, noise=0.01, rate=10.0)
    values = values.copy()
    values[from_step:] *= np.linspace(1.0, to_factor, n - from_step)
    return steps, values


def test_a_sustained_climb_back_after_warm_up_is_divergence():
    analysis = analyze_history(frame(loss=diverging(), grad_norm=steady_grad(N)))
    step = analysis.events["divergence_step"]
    assert step is not None and step > 120
    factor = analysis.factors["stability"]
    assert factor.points == 5
    assert f"loss diverged from step {step} (a sustained climb back" in factor.explanation
    assert f"The loss diverged from step {step}" in analysis.suggestions[0].message


def test_a_rough_warm_up_is_not_divergence():
    steps, values = decaying(N, noise=0.0)
    values = values.copy()
    values[4:15] *= 3.0  # triples inside the first 10% of the run, then recovers
    analysis = analyze_history(frame(loss=(steps, values), grad_norm=steady_grad(N)))
    assert analysis.events["divergence_step"] is None
    assert analysis.factors["stability"].points == 20


def spiky_grad(spike_steps, n=N):
    return with_values(steady_grad(n), spike_steps, 5.0)


def spiky_loss(spike_steps, n=N):
    """A healthy decay with loss spikes that recover at once (a bad batch)."""
    return with_values(decaying(n, rate=12.0), spike_steps, 3.0)


def test_more_loss_spikes_than_a_run_of_its_length_allows_make_training_unstable():
    analysis = analyze_history(frame(loss=spiky_loss([61, 101, 141, 181]), grad_norm=steady_grad(N)))
    assert analysis.events["loss_spike_steps"] == [61, 101, 141, 181]
    assert analysis.factors["stability"].points == 5
    assert "4 spike(s)" in analysis.factors["stability"].explanation
    assert "3 allowed for a run of this length" in analysis.factors["stability"].explanation
    assert "The first spike was at step 61" in analysis.suggestions[0].message


def test_the_spikes_allowed_grow_with_the_length_of_the_run():
    n = 2000  # 1% of the logged points: 20 spikes allowed
    spikes = list(range(300, 1900, 200))  # 8 isolated spikes
    analysis = analyze_history(frame(loss=spiky_loss(spikes, n=n), grad_norm=steady_grad(n)))
    assert analysis.events["loss_spike_steps"] == spikes
    assert analysis.factors["stability"].points == 20
    assert "20 allowed" in analysis.factors["stability"].explanation


def test_gradient_norm_spikes_with_a_healthy_loss_are_reported_but_not_instability():
    # Heavy-tailed gradient norms (batch size 1, large models) are common in healthy runs.
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=spiky_grad([61, 101, 141, 181])))
    assert analysis.events["grad_norm_spike_steps"] == [61, 101, 141, 181]
    assert analysis.verdicts["unstable"].answer == "no"
    assert analysis.factors["stability"].points == 20


def test_one_spike_is_stable_with_a_low_priority_note():
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=spiky_grad([61])),
                               params={"max_grad_norm": "5.0"})
    assert analysis.events["grad_norm_spike_steps"] == [61]
    assert analysis.factors["stability"].points == 20
    assert "below the limit" in analysis.factors["stability"].explanation
    note = only(suggestions_of(analysis, Category.STABILITY))
    assert note.priority is Priority.LOW
    assert "1 isolated spike(s) (below the limit of 3)" in note.message
    assert note.suggested_value < 5.0  # tighter than the clipping the run had


def test_no_clipping_advice_that_would_loosen_the_clipping_a_run_already_has():
    # The run already clipped at 1.0, below the 90th percentile of its gradient norms: clipping "at the
    # 90th percentile" would loosen it, so no such note.
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=spiky_grad([61])),
                               params={"max_grad_norm": "1.0"})
    assert not suggestions_of(analysis, Category.STABILITY)


# --- stability advice: warm-up, clip threshold, extreme clipping -------------------------------------------------


def test_early_instability_without_warm_up_suggests_warm_up():
    analysis = analyze_history(frame(loss=with_values(decaying(N), [10], np.nan), grad_norm=steady_grad(N)))
    first = analysis.suggestions[0]
    assert first.category is Category.STABILITY and first.priority is Priority.HIGH
    assert "warm-up" in first.message
    assert first.change == "warmup_ratio: unset -> 0.1"


def test_later_instability_suggests_clipping_at_the_90th_percentile_of_the_gradient_norm():
    steps, grad = steady_grad(N, level=2.0, noise=0.3)
    analysis = analyze_history(frame(loss=with_values(decaying(N), [151], np.nan), grad_norm=(steps, grad)))
    p90 = float(np.percentile(grad, 90))
    assert analysis.metrics_summary["grad_norm_p90"] == pytest.approx(p90)
    clip = analysis.suggestions[0]
    assert clip.category is Category.STABILITY and clip.priority is Priority.HIGH
    assert clip.parameter == "max_grad_norm" and clip.current_value is None
    assert f"({p90:.3g})" in clip.message
    assert clip.suggested_value == pytest.approx(p90, rel=0.05)  # rounded to two significant digits


def test_clipping_most_updates_already_suggests_halving_the_learning_rate():
    steps, grad = steady_grad(N, level=2.0, noise=0.1)
    assert np.mean(grad > 1.0) > 0.5
    analysis = analyze_history(frame(loss=with_values(decaying(N), [151], np.nan), grad_norm=(steps, grad)),
                               params={"max_grad_norm": "1.0", "learning_rate": "0.001"})
    assert analysis.metrics_summary["clipped_fraction"] == 1.0
    lower = analysis.suggestions[0]
    assert lower.category is Category.STABILITY and lower.priority is Priority.HIGH
    assert "clipping is extreme" in lower.message
    assert (lower.parameter, lower.current_value, lower.suggested_value) == ("learning_rate", 0.001, 0.0005)
    assert lower.change == "learning_rate: 1e-3 -> 5e-4"


def test_when_clipping_is_suggested_lowering_the_learning_rate_follows_as_the_last_resort():
    analysis = analyze_history(frame(loss=with_values(decaying(N), [151], np.nan), grad_norm=steady_grad(N)),
                               params={"learning_rate": "2e-4"})
    stability = suggestions_of(analysis, Category.STABILITY)
    assert [s.parameter for s in stability] == ["max_grad_norm", "learning_rate"]
    assert stability[1].priority is Priority.MEDIUM and "last resort" in stability[1].message


FORMAT_CASES = [
    (0.0002, "2e-4"),
    (0.0001, "1e-4"),
    (0.001, "1e-3"),
    (0.0005, "5e-4"),
    (0.005, "5e-3"),
    (0.01, "0.01"),
    (2e-5, "2e-5"),
    (0.1, "0.1"),
    (0.05, "0.05"),
    (1.0, "1"),
    (2.5, "2.5"),
    (16, "16"),
    (True, "True"),
    (0.0, "0"),
    (123456.0, "1.23e5"),
    (float("inf"), "inf"),
    (float("nan"), "nan"),
]


@pytest.mark.parametrize("value, text", FORMAT_CASES)
def test_a_concrete_change_shows_values_short(value, text):
    assert format_value(value) == text


# --- overfitting: gap and Prechelt's generalization loss ---------------------------------------------------------


def with_evals(eval_values):
    loss = decaying(N, rate=12.0)
    steps = loss[0][19::20]
    return frame(loss=loss, eval_loss=(steps[: len(eval_values)], np.asarray(eval_values)))


def test_a_rising_eval_loss_suggests_keeping_the_best_checkpoint():
    analysis = analyze_history(with_evals([1.0, 0.7, 0.55, 0.5, 0.52, 0.55, 0.6, 0.65, 0.7, 0.75]))
    assert analysis.events["best_eval_step"] == 80
    assert analysis.metrics_summary["generalization_loss_pct"] == pytest.approx(50.0)
    keep = only([s for s in analysis.suggestions if s.parameter == "load_best_model_at_end"])
    assert keep.category is Category.OVERFITTING
    assert "0.5 at step 80" in keep.message and "load_best_model_at_end=True" in keep.message
    assert keep.change == "load_best_model_at_end: unset -> True"
    factor = analysis.factors["overfitting"]
    expected = "eval loss rose from its best eval loss 0.5 at step 80 to 0.75 at step 200 (50.0% above"
    assert expected in factor.explanation
    assert factor.value == pytest.approx(0.5) and factor.points == 0
    assert analysis.verdicts["overfit"].answer == "yes"
    assert analysis.top_concern == "overfitting" and analysis.suggestions[0] is keep


def test_an_eval_loss_within_2_percent_of_its_best_is_not_called_rising():
    analysis = analyze_history(with_evals([1.0, 0.7, 0.55, 0.5, 0.505, 0.505, 0.505, 0.505, 0.505, 0.505]))
    assert analysis.metrics_summary["generalization_loss_pct"] == pytest.approx(1.0)
    assert not [s for s in analysis.suggestions if s.parameter == "load_best_model_at_end"]


def test_a_train_eval_gap_alone_is_not_overfitting():
    # Eval 50% above train all along (dropout, a shifted eval set) but still falling: a healthy run.
    loss = decaying(N, rate=12.0, noise=0.0)
    analysis = analyze_history(frame(loss=loss, eval_loss=evals_of(loss, scale=1.5)), params={"lora_dropout": "0.05"})
    factor = analysis.factors["overfitting"]
    assert factor.points == 15 and factor.value == 0.0
    assert "a gap alone is not overfitting" in factor.explanation
    assert analysis.metrics_summary["train_eval_gap_pct"] == pytest.approx(50.0, abs=1.0)
    assert analysis.verdicts["overfit"].answer == "no"
    assert not suggestions_of(analysis, Category.OVERFITTING)


def test_an_overfitting_run_is_told_to_regularize_and_never_to_train_longer():
    # Training loss still falling at the end, eval loss climbing for many evaluations.
    loss = still_falling(N)
    analysis = analyze_history(frame(loss=loss, eval_loss=(loss[0][19::20], [1.6, 1.3, 1.15, 1.1, 1.13, 1.18,
                                                                          1.24, 1.3, 1.37, 1.45])),
                               params={"lora_dropout": "0.05", "epochs": "3"})
    assert analysis.verdicts["converged"].answer == "no"
    assert analysis.top_concern == "overfitting"
    assert analysis.suggestions[0].parameter == "load_best_model_at_end"
    assert "step 80" in analysis.suggestions[0].message
    dropout = only([s for s in analysis.suggestions if s.parameter == "lora_dropout"])
    assert dropout.change == "lora_dropout: 0.05 -> 0.1"
    assert not suggestions_of(analysis, Category.CONVERGENCE)
    assert not [s for s in analysis.suggestions if "longer" in s.message]


def test_an_eval_loss_wiggling_near_zero_is_not_overfitting():
    # Eval 0.0255 against a best of 0.0225 is "13% above best", but a wiggle of a loss that fell from 0.6.
    loss = decaying(N, start=0.7, floor=0.01, rate=12.0)
    evals = [0.6, 0.2, 0.05, 0.03, 0.0225, 0.024, 0.026, 0.023, 0.025, 0.0255]
    analysis = analyze_history(frame(loss=loss, eval_loss=(loss[0][19::20], evals)))
    assert analysis.verdicts["overfit"].answer == "no"
    assert analysis.factors["overfitting"].points == 15


def test_a_flat_noisy_eval_loss_is_rarely_called_rising_and_a_clear_u_turn_usually_is():
    """The lowest of many noisy evals at one level lies well below that level by chance; a rule that
    measured the rise from that low point called flat eval losses rising in 15% of such runs."""
    rng = np.random.default_rng(7)
    thresholds = Thresholds()
    flat_called, u_called = 0, 0
    for _ in range(200):
        n, noise = int(rng.integers(6, 40)), float(rng.choice([0.002, 0.01, 0.03]))
        x = np.arange(n)
        level = 1.0 + 0.5 * np.exp(-x / 2)
        flat_called += eval_rise(1.0 + rng.normal(0, noise, n), thresholds).rising
        u_turn = level + np.where(x > n // 3, 0.02 * (x - n // 3), 0.0)
        u_called += eval_rise(u_turn + rng.normal(0, noise / 3, n), thresholds).rising
    assert flat_called <= 0.05 * 200
    assert u_called >= 0.75 * 200


# --- underfitting ---------------------------------------------------------------------------------------------


def test_a_flat_loss_did_not_learn_and_is_rated_poor_whatever_else_it_earns():
    analysis = analyze_history(frame(loss=flat(N), grad_norm=steady_grad(N)), params={"learning_rate": "1e-4"})
    assert analysis.verdicts["learned"].answer == "no"
    assert analysis.quality_score <= 49 and analysis.overall_assessment.startswith("Poor")
    assert analysis.top_concern == "not_learned"
    first = analysis.suggestions[0]
    assert first.category is Category.UNDERFITTING and first.priority is Priority.HIGH
    assert "did not learn" in first.message and first.change == "learning_rate: 1e-4 -> 2e-4"
    assert "The model did not learn" in render_markdown(analysis)


def test_a_classifier_at_chance_level_did_not_learn():
    # Binary classifier whose loss falls from a bad start to ln 2 = 0.693 and stays there: a real fall,
    # but to a uniform guess. K comes from id2label, the way Hugging Face's MLflowCallback logs it.
    steps, values = decaying(N, start=0.9, floor=0.69, rate=20.0, noise=0.01)
    analysis = analyze_history(frame(loss=(steps, values), grad_norm=steady_grad(N)),
                               params={"id2label": "{0: 'NEGATIVE', 1: 'POSITIVE'}"})
    learned = analysis.verdicts["learned"]
    assert learned.answer == "no" and "chance level for 2 classes" in learned.reason
    assert analysis.quality_score <= 49


def test_an_all_zero_loss_is_a_dead_run_not_a_perfect_one():
    steps = np.arange(1, 101)
    analysis = analyze_history(frame(loss=(steps, np.zeros(100)), grad_norm=(steps, np.zeros(100))))
    assert analysis.verdicts["learned"].answer == "no"
    assert "0.0 at every one of its 100 points" in analysis.verdicts["learned"].reason
    assert analysis.quality_score <= 49


def test_a_collapse_after_a_blow_up_did_not_learn_and_the_blow_up_is_not_the_initial_loss():
    steps = np.arange(1, 201)
    values = np.r_[[1.6, 1.5], np.full(20, 12.0), np.linspace(11.0, 2.5, 60), np.full(118, 2.4)]
    values = values * (1 + 0.01 * np.random.default_rng(0).standard_normal(200))
    analysis = analyze_history(frame(loss=(steps, values)), params={"learning_rate": "5e-3"})
    assert analysis.metrics_summary["initial_loss"] == pytest.approx(values[0])
    assert analysis.verdicts["learned"].answer == "no"
    first = analysis.suggestions[0]
    assert "collapse" in first.message and first.change == "learning_rate: 5e-3 -> 5e-4"


def test_a_first_log_outlier_is_not_the_initial_loss():
    steps, values = decaying(N, start=0.8, floor=0.4, rate=8.0)
    values = values.copy()
    values[0] = 14.8  # a start artifact far above the following logs
    analysis = analyze_history(frame(loss=(steps, values)))
    assert analysis.metrics_summary["initial_loss_raw"] == pytest.approx(14.8)
    assert analysis.metrics_summary["initial_loss"] < 1.0
    assert analysis.factors["loss_reduction"].value < 0.6


# --- metric names in the wild ------------------------------------------------------------------------------------


def test_hugging_face_names_are_detected_and_its_one_point_train_loss_is_not_the_curve():
    loss = decaying(N, rate=12.0)
    history = frame(loss=loss, eval_loss=evals_of(loss), grad_norm=steady_grad(N),
                    learning_rate=(loss[0], np.linspace(2e-4, 0, N)), epoch=(loss[0], loss[0] / N * 3),
                    train_loss=([N], [0.5]))
    analysis = analyze_history(history)
    assert analysis.metric_names == {"train_loss": "loss", "eval_loss": "eval_loss", "grad_norm": "grad_norm",
                                     "learning_rate": "learning_rate", "epoch": "epoch"}
    assert analysis.metrics_summary["learning_rate"] == 2e-4  # the schedule's peak


def test_lightning_names_are_detected():
    loss = decaying(N, rate=12.0)
    history = frame(train_loss=loss, val_loss=evals_of(loss), **{"grad_2.0_norm_total": steady_grad(N),
                                                                    "lr-AdamW": (loss[0], np.full(N, 1e-4))})
    assert analyze_history(history).metric_names == {
        "train_loss": "train_loss", "eval_loss": "val_loss", "grad_norm": "grad_2.0_norm_total",
        "learning_rate": "lr-AdamW",
    }


def test_keras_names_are_detected():
    loss = decaying(N, rate=12.0)
    analysis = analyze_history(frame(loss=loss, val_loss=evals_of(loss)))
    assert analysis.metric_names == {"train_loss": "loss", "eval_loss": "val_loss"}


def test_an_override_names_the_training_loss():
    history = frame(my_loss=decaying(N), loss=flat(N))
    analysis = analyze_history(history, metric_names={"train_loss": "my_loss"})
    assert analysis.metric_names == {"train_loss": "my_loss"}
    assert analysis.factors["loss_reduction"].points >= 20  # read the decaying curve, not the flat one
    assert "train_loss = `my_loss`" in render_markdown(analysis)


# --- epochs ------------------------------------------------------------------------------------------------------

EPOCH_CASES = [
    # (log an `epoch` metric?, params, epochs_completed)
    (True, {"epochs": "5"}, 3.0),  # the logged metric wins
    (False, {"epochs": "2"}, 2.0),
    (False, {"num_train_epochs": "4"}, 4.0),
    (False, {"epochs": "2", "max_steps": "200"}, None),  # max_steps overrides epochs (Hugging Face)
    (False, {}, None),
    (False, None, None),
]


@pytest.mark.parametrize("log_epoch, params, epochs", EPOCH_CASES)
def test_epochs_come_from_the_epoch_metric_else_from_params(log_epoch, params, epochs):
    loss = decaying(N, rate=12.0)
    metrics = {"loss": loss}
    if log_epoch:
        metrics["epoch"] = (loss[0], loss[0] / N * 3)
    analysis = analyze_history(frame(**metrics), params=params)
    assert analysis.metrics_summary["epochs_completed"] == epochs
    assert analysis.factors["efficiency"].measured is (epochs is not None)


HF_EPOCH_CASES = [
    # (params as Hugging Face's MLflowCallback logs them, last logged `epoch` or None for no metric, epochs_completed)
    ({"num_train_epochs": "3.0", "max_steps": "-1"}, None, 3.0),  # training by epochs: max_steps unset
    ({"num_train_epochs": "3", "max_steps": "0"}, None, 3.0),
    ({"epochs": "2", "max_steps": "-1"}, None, 2.0),  # our own job's param
    ({"num_train_epochs": "3", "max_steps": "-1"}, 3.0, 3.0),
    ({"num_train_epochs": "3", "max_steps": "-1"}, 1.2, 1.2),  # stopped early: the epochs actually trained
    ({"num_train_epochs": "3", "max_steps": "200"}, 0.5, 0.5),  # max_steps set: the epoch metric tells
    ({"num_train_epochs": "3", "max_steps": "200"}, None, None),  # max_steps set, no metric: unknown
]


@pytest.mark.parametrize("params, last_epoch, epochs", HF_EPOCH_CASES)
def test_hugging_face_runs_by_epochs_have_their_efficiency_measured(params, last_epoch, epochs):
    loss = decaying(N, rate=12.0)
    metrics = {"loss": loss}
    if last_epoch is not None:
        metrics["epoch"] = (loss[0], loss[0] / N * last_epoch)
    analysis = analyze_history(frame(**metrics), params=params)
    summary, efficiency = analysis.metrics_summary, analysis.factors["efficiency"]
    assert efficiency.measured is (epochs is not None)
    if epochs is None:
        assert summary["epochs_completed"] is None
    else:
        assert summary["epochs_completed"] == pytest.approx(epochs)
        rate = (summary["initial_loss"] - summary["final_loss"]) / epochs
        assert efficiency.value == pytest.approx(rate) and summary["loss_per_epoch"] == pytest.approx(rate)
        assert f"over {epochs:.3g} epoch(s)" in efficiency.explanation
        assert "Efficiency was not measured" not in " ".join(s.message for s in analysis.suggestions)


@settings(max_examples=100, deadline=None)
@given(
    planned=st.floats(min_value=0.01, max_value=1000.0),
    max_steps=st.sampled_from([None, "-1", "0", "-1.0"]),
    name=st.sampled_from(["num_train_epochs", "epochs", "max_epochs"]),
    trained=st.none() | st.floats(min_value=0.01, max_value=1000.0),
)
def test_epochs_are_the_ones_trained_else_the_planned_ones_when_max_steps_is_unset(planned, max_steps, name, trained):
    loss = decaying(N, rate=12.0)
    metrics = {"loss": loss}
    if trained is not None:  # the epoch metric ends at `trained`, whatever was planned
        metrics["epoch"] = (loss[0], loss[0] / N * trained)
    params = {name: str(planned)} | ({} if max_steps is None else {"max_steps": max_steps})
    analysis = analyze_history(frame(**metrics), params=params)
    expected = trained if trained is not None else planned
    assert analysis.metrics_summary["epochs_completed"] == pytest.approx(expected)
    assert analysis.factors["efficiency"].measured


# --- the loss-curve figure ------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("history", [
    good_run(),
    frame(loss=decaying(N, rate=12.0), grad_norm=with_values(steady_grad(N), [61, 101, 141], 5.0)),
    frame(loss=diverging()),
], ids=["good", "spikes", "divergence"])
def test_the_loss_curve_figure_renders_to_png(history):
    figure = loss_curve_figure(analyze_history(history))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(PNG_MAGIC)


def test_a_scalar_only_analysis_has_no_figure():
    analysis = analyze_training_quality(TrainingResult(final_loss=0.35, initial_loss=2.1))
    with pytest.raises(ValueError, match="no loss history to plot"):
        loss_curve_figure(analysis)


def test_a_short_final_window_is_converged_only_when_practically_flat():
    # 30 points: the final window has 6, too few for the trend test to mean anything.
    steps = np.arange(1, 31)
    falling = 2.0 - 0.05 * steps  # still falling about 12% over the last 6 points
    analysis = analyze_history(frame(loss=(steps, falling)))
    assert analysis.factors["convergence"].points == 10
    assert "too few points for a trend test" in analysis.factors["convergence"].explanation
    flat = np.r_[np.linspace(2.0, 0.5, 24), np.full(6, 0.5)]
    assert analyze_history(frame(loss=(steps, flat))).factors["convergence"].points == 25


# --- noise and scale: nothing fires within the noise ----------------------------------------------------------


def test_a_lone_non_finite_gradient_norm_with_a_finite_loss_is_an_fp16_skipped_step_not_instability():
    grad = with_values(steady_grad(N), [90], np.inf)
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=grad))
    assert analysis.verdicts["unstable"].answer == "no"
    assert analysis.factors["stability"].points == 20
    assert "fp16 loss scaling skips such a step" in analysis.factors["stability"].explanation


def test_repeated_non_finite_gradient_norms_are_instability():
    grad = with_values(steady_grad(N), [60, 90, 120, 150], np.inf)
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=grad))
    assert analysis.verdicts["unstable"].answer == "yes"


def test_a_tiny_noisy_loss_late_in_a_healthy_run_is_neither_divergence_nor_spikes():
    # Late in training the batch loss wobbles between 0.02 and 0.12: several times its running minimum.
    rng = np.random.default_rng(3)
    steps = np.arange(1, 401)
    values = np.r_[np.linspace(0.7, 0.05, 100), rng.uniform(0.02, 0.12, 300)]
    analysis = analyze_history(frame(loss=(steps, values), grad_norm=steady_grad(400)))
    assert analysis.events["divergence_step"] is None
    assert analysis.events["loss_spike_steps"] == []
    assert analysis.verdicts["unstable"].answer == "no"
    assert analysis.verdicts["converged"].answer == "yes"


def test_a_loss_stepping_down_at_each_epoch_and_flat_within_the_last_is_converged():
    rng = np.random.default_rng(5)
    steps = np.arange(1, 301)
    epoch_level = np.repeat([1.2, 0.9, 0.8], 100)  # shrinking step-downs at epochs 1 and 2
    values = epoch_level * (1 + 0.03 * rng.standard_normal(300))
    analysis = analyze_history(frame(loss=(steps, values)))
    assert analysis.verdicts["converged"].answer == "yes"


def test_verdicts_on_a_short_run_have_low_confidence():
    steps = np.arange(1, 10)
    analysis = analyze_history(frame(loss=(steps, np.linspace(2.0, 1.0, 9))))
    assert analysis.verdicts["converged"].confidence == "low"
    long_run = analyze_history(good_run())
    assert {v.confidence for v in long_run.verdicts.values()} == {"high"}


def test_the_verdicts_and_top_concern_are_in_the_json_and_the_report():
    analysis = analyze_history(good_run())
    data = analysis.to_dict()
    assert data["schema_version"] == "1.1"
    assert data["top_concern"] == "none"
    assert data["verdicts"]["learned"] == {"answer": "yes", "confidence": "high",
                                           "reason": analysis.verdicts["learned"].reason}
    report = render_markdown(analysis)
    assert "| Did the model learn? | yes | high |" in report and "Top concern: **none**" in report
