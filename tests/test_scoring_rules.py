"""The diagnostic rules of diagnostics.md sections 2 and 3, each on a hand-built history of known shape."""

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
from scoring import (
    Category,
    Priority,
    QualityAnalysis,
    TrainingResult,
    analyze_history,
    analyze_training_quality,
)
from scoring.models import format_value

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
    assert "at least 5" in analysis.factors["convergence"].explanation


# --- stability: non-finite values, breakdown, divergence, spikes ------------------------------------------------


def test_nan_in_the_loss_and_inf_in_the_gradient_norm_are_a_stability_failure():
    loss = with_values(decaying(N), [121], np.nan)
    grad = with_values(steady_grad(N), [131], np.inf)
    analysis = analyze_history(frame(loss=loss, grad_norm=grad))
    factor = analysis.factors["stability"]
    assert factor.points == 5
    assert "non-finite loss at step(s) 121" in factor.explanation
    assert "non-finite gradient norm at step(s) 131" in factor.explanation
    assert analysis.events["nonfinite_steps"] == [121, 131]
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


def test_a_loss_above_twice_its_running_minimum_after_warm_up_is_divergence():
    analysis = analyze_history(frame(loss=diverging(), grad_norm=steady_grad(N)))
    step = analysis.events["divergence_step"]
    assert step is not None and step > 120
    factor = analysis.factors["stability"]
    assert factor.points == 5
    assert f"loss diverged from step {step} (above 2x its running minimum)" in factor.explanation
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


def test_three_gradient_norm_spikes_make_training_unstable():
    analysis = analyze_history(frame(loss=decaying(N, rate=12.0), grad_norm=spiky_grad([61, 101, 141])))
    assert analysis.events["grad_norm_spike_steps"] == [61, 101, 141]
    assert analysis.factors["stability"].points == 5
    assert "3 spike(s)" in analysis.factors["stability"].explanation
    assert "The first spike was at step 61" in analysis.suggestions[0].message


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


def test_a_loss_spike_counts_like_a_gradient_norm_spike():
    loss = with_values(decaying(N, rate=12.0), [81], 3.0)
    analysis = analyze_history(frame(loss=loss, grad_norm=spiky_grad([61, 141])))
    assert analysis.events["loss_spike_steps"] == [81]
    assert analysis.factors["stability"].points == 5


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
    assert "eval loss ended 50.0% above its best (0.5 at step 80)" in analysis.factors["overfitting"].explanation


def test_an_eval_loss_within_2_percent_of_its_best_is_not_called_rising():
    analysis = analyze_history(with_evals([1.0, 0.7, 0.55, 0.5, 0.505, 0.505, 0.505, 0.505, 0.505, 0.505]))
    assert analysis.metrics_summary["generalization_loss_pct"] == pytest.approx(1.0)
    assert not [s for s in analysis.suggestions if s.parameter == "load_best_model_at_end"]


def test_an_eval_loss_within_10_percent_of_the_training_loss_earns_full_points():
    loss = decaying(N, rate=12.0, noise=0.0)
    analysis = analyze_history(frame(loss=loss, eval_loss=evals_of(loss, scale=1.05)))
    factor = analysis.factors["overfitting"]
    assert factor.value == pytest.approx(0.05, abs=1e-3)  # against the mean of the last few training points
    assert factor.points == 15
    assert "at step 200" in factor.explanation
    assert not suggestions_of(analysis, Category.OVERFITTING)


def test_a_large_eval_gap_suggests_more_lora_dropout():
    loss = decaying(N, rate=12.0, noise=0.0)
    analysis = analyze_history(frame(loss=loss, eval_loss=evals_of(loss, scale=1.5)), params={"lora_dropout": "0.05"})
    assert analysis.factors["overfitting"].points == 0
    dropout = only(suggestions_of(analysis, Category.OVERFITTING))
    assert dropout.priority is Priority.HIGH
    assert dropout.change == "lora_dropout: 0.05 -> 0.1"


# --- underfitting ---------------------------------------------------------------------------------------------


def test_a_flat_loss_is_underfitting_and_suggests_doubling_the_lora_rank():
    analysis = analyze_history(frame(loss=flat(N)), params={"lora_r": "8"})
    assert analysis.factors["loss_reduction"].points == 5
    raise_capacity = only(suggestions_of(analysis, Category.UNDERFITTING))
    assert raise_capacity.priority is Priority.HIGH
    assert "Regularization will not help" in raise_capacity.message
    assert raise_capacity.change == "lora_r: 8 -> 16"
    assert "ln " not in raise_capacity.message


def test_with_num_labels_the_underfitting_message_compares_with_chance_level():
    analysis = analyze_history(frame(loss=flat(N)), params={"lora_r": "8", "num_labels": "4"})
    message = only(suggestions_of(analysis, Category.UNDERFITTING)).message
    assert "For 4 classes, chance-level loss is ln 4 = 1.39" in message


def test_a_flat_loss_without_a_lora_rank_suggests_a_higher_learning_rate():
    analysis = analyze_history(frame(loss=flat(N), grad_norm=steady_grad(N)), params={"learning_rate": "1e-4"})
    assert only(suggestions_of(analysis, Category.UNDERFITTING)).change == "learning_rate: 1e-4 -> 2e-4"


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
    assert "train_loss = `my_loss`" in analysis.to_markdown()


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


# --- the loss-curve figure ------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("history", [
    good_run(),
    frame(loss=decaying(N, rate=12.0), grad_norm=with_values(steady_grad(N), [61, 101, 141], 5.0)),
    frame(loss=diverging()),
], ids=["good", "spikes", "divergence"])
def test_the_loss_curve_figure_renders_to_png(history):
    figure = analyze_history(history).loss_curve_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(PNG_MAGIC)


def test_a_scalar_only_analysis_has_no_figure():
    analysis = analyze_training_quality(TrainingResult(final_loss=0.35, initial_loss=2.1))
    with pytest.raises(ValueError, match="no loss history to plot"):
        analysis.loss_curve_figure()


def test_a_short_final_window_is_converged_only_when_practically_flat():
    # 30 points: the final window has 6, too few for the trend test to mean anything.
    steps = np.arange(1, 31)
    falling = 2.0 - 0.05 * steps  # still falling about 12% over the last 6 points
    analysis = analyze_history(frame(loss=(steps, falling)))
    assert analysis.factors["convergence"].points == 10
    assert "too few points for a trend test" in analysis.factors["convergence"].explanation
    flat = np.r_[np.linspace(2.0, 0.5, 24), np.full(6, 0.5)]
    assert analyze_history(frame(loss=(steps, flat))).factors["convergence"].points == 25
