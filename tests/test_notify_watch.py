"""Training warnings: NaN/inf, loss spikes, rising eval loss and stalls, each sent at most once per run."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notify import (
    EVAL_RISING,
    LOSS_SPIKE,
    NONFINITE,
    STALL,
    WARNING_ADVICE,
    WARNING_KINDS,
    EventType,
    TrainingWatch,
)


def kinds(events) -> list[str]:
    return [event.details["kind"] for event in events]


def smooth_losses(n: int, start: float = 2.0, seed: int = 0) -> list[float]:
    """A slowly falling loss with about 2% noise, like a healthy fine-tuning run."""
    rng = random.Random(seed)
    return [start * (1 - 0.005 * i) * (1 + rng.gauss(0, 0.02)) for i in range(n)]


def feed_losses(watch: TrainingWatch, losses, first_step: int = 10, every: int = 10) -> list:
    events = []
    for i, loss in enumerate(losses):
        events += watch.observe(first_step + i * every, {"loss": loss, "grad_norm": 1.0, "learning_rate": 2e-4})
    return events


# --- the kinds -------------------------------------------------------------------------------------------


def test_the_kinds_are_one_table_with_advice_for_each():
    assert WARNING_KINDS == (NONFINITE, LOSS_SPIKE, EVAL_RISING, STALL)
    assert (NONFINITE, LOSS_SPIKE, EVAL_RISING, STALL) == ("nonfinite", "loss_spike", "eval_rising", "stall")
    assert set(WARNING_ADVICE) == set(WARNING_KINDS)


# --- non-finite values -----------------------------------------------------------------------------------


def test_nan_loss_is_a_numerical_breakdown_naming_the_gradient_norm():
    events = TrainingWatch().observe(120, {"loss": math.nan, "grad_norm": math.inf}, total_steps=1000)
    assert kinds(events) == [NONFINITE]
    event = events[0]
    assert event.event_type is EventType.WARNING
    assert event.title == "Training Warning: nonfinite"
    assert event.current_step == 120 and event.total_steps == 1000
    assert event.message.startswith(
        "Loss is NaN at step 120 (gradient norm inf). Training has numerically broken down; "
        "lower the learning rate or enable gradient clipping."
    )
    assert "Step 120/1000 (12%)" in event.message


def test_inf_gradient_norm_warns_even_when_the_loss_looks_fine():
    # The Trainer replaces a non-finite loss by a recent average, so the gradient norm is the reliable signal.
    events = TrainingWatch().observe(40, {"loss": 1.25, "grad_norm": math.inf})
    assert kinds(events) == [NONFINITE]
    assert events[0].message.startswith("Gradient norm is inf at step 40 (loss 1.25).")


def test_negative_infinite_loss_is_non_finite():
    events = TrainingWatch().observe(5, {"loss": -math.inf})
    assert kinds(events) == [NONFINITE]
    assert "Loss is -inf at step 5." in events[0].message


def test_zero_loss_beside_a_nan_gradient_norm_is_a_breakdown_not_a_perfect_fit():
    events = TrainingWatch().observe(300, {"loss": 0.0, "grad_norm": math.nan})
    assert kinds(events) == [NONFINITE]
    message = events[0].message
    assert "Loss is 0.0 at step 300 with a NaN gradient norm" in message
    assert "numerical breakdown, not a perfect fit" in message
    assert "lower the learning rate or enable gradient clipping" in message


def test_zero_loss_with_a_finite_gradient_norm_is_no_warning():
    assert TrainingWatch().observe(300, {"loss": 0.0, "grad_norm": 0.5}) == []


def test_nan_eval_loss_is_non_finite():
    events = TrainingWatch().observe(500, {"eval_loss": math.nan, "epoch": 1.0})
    assert kinds(events) == [NONFINITE]
    assert "Eval loss is NaN at step 500." in events[0].message


def test_non_finite_values_warn_once_however_often_they_repeat():
    watch = TrainingWatch()
    events = []
    for step in range(10, 200, 10):
        events += watch.observe(step, {"loss": math.nan, "grad_norm": math.nan})
    assert kinds(events) == [NONFINITE]
    assert watch.warned == {NONFINITE}


# --- loss spikes ---------------------------------------------------------------------------------------------


def test_a_spike_after_30_smooth_points_warns_once_with_its_numbers():
    watch = TrainingWatch()
    losses = smooth_losses(30)
    assert feed_losses(watch, losses) == []
    window_mean = sum(losses[-20:]) / 20
    events = watch.observe(310, {"loss": 9.0, "grad_norm": 40.0}, total_steps=1000)
    assert kinds(events) == [LOSS_SPIKE]
    message = events[0].message
    assert message.startswith("Loss spiked to 9 at step 310, ")
    assert f"{9.0 / window_mean:.1f} times the mean of the previous 20 logged values" in message
    assert "z-score" in message
    assert WARNING_ADVICE[LOSS_SPIKE] in message
    assert watch.observe(320, {"loss": 12.0}) == []  # a second spike is the same warning


def test_ordinary_noise_is_no_spike():
    rng = random.Random(7)
    losses = [1.0 * (1 + rng.uniform(-0.3, 0.3)) for _ in range(500)]  # +-30%: noisy, but no spike
    assert feed_losses(TrainingWatch(), losses) == []


def test_a_high_z_score_alone_is_no_spike_when_the_ratio_is_small():
    # Very smooth loss: 1.2x its mean is many standard deviations away, but not 1.5x the mean.
    watch = TrainingWatch()
    feed_losses(watch, [1.0 + 0.0001 * (i % 2) for i in range(20)])
    assert watch.observe(500, {"loss": 1.2}) == []
    assert kinds(watch.observe(510, {"loss": 1.6})) == [LOSS_SPIKE]


def test_a_large_ratio_alone_is_no_spike_when_the_window_is_that_noisy():
    watch = TrainingWatch()
    feed_losses(watch, [0.5, 3.0] * 10)  # mean 1.75, std 1.25
    assert watch.observe(500, {"loss": 3.5}) == []  # 2x the mean, but z = 1.4


@pytest.mark.parametrize(("loss", "spike"), [(2.9, False), (3.0, False), (3.1, True)])
def test_a_flat_window_lets_the_ratio_decide(loss, spike):
    watch = TrainingWatch()
    feed_losses(watch, [2.0] * 20)
    assert kinds(watch.observe(500, {"loss": loss})) == ([LOSS_SPIKE] if spike else [])


def test_a_perfectly_flat_window_says_so():
    watch = TrainingWatch()
    feed_losses(watch, [2.0] * 20)
    events = watch.observe(500, {"loss": 4.0})
    assert kinds(events) == [LOSS_SPIKE]
    assert "(2; a flat window)" in events[0].message


def test_no_spike_before_the_window_is_full():
    watch = TrainingWatch(spike_window=20)
    feed_losses(watch, [1.0] * 19)
    assert watch.observe(500, {"loss": 100.0}) == []


def test_the_spike_window_is_a_trailing_window():
    watch = TrainingWatch(spike_window=5)
    feed_losses(watch, [10.0] * 50 + [1.0] * 5)  # the early high losses have left the window
    assert kinds(watch.observe(1000, {"loss": 2.0})) == [LOSS_SPIKE]


def test_broken_entries_do_not_enter_the_spike_window():
    watch = TrainingWatch(spike_window=3)
    feed_losses(watch, [1.0, 1.0, 1.0])
    assert kinds(watch.observe(100, {"loss": 0.0, "grad_norm": math.nan})) == [NONFINITE]
    assert watch.observe(110, {"loss": 1.0}) == []  # 0.0 was not averaged in
    assert kinds(watch.observe(120, {"loss": 2.0})) == [LOSS_SPIKE]


def test_losses_at_or_below_zero_never_spike():
    watch = TrainingWatch(spike_window=3)
    feed_losses(watch, [-3.0, -3.0, -3.0])
    assert watch.observe(100, {"loss": -1.0}) == []


# --- rising eval loss (Prechelt's generalization loss) -------------------------------------------------------


def test_eval_loss_rising_past_2_percent_names_the_best_step():
    watch = TrainingWatch()
    assert watch.observe(100, {"eval_loss": 1.30}) == []
    assert watch.observe(200, {"eval_loss": 1.20}) == []  # the best point
    assert watch.observe(300, {"eval_loss": 1.22}) == []  # GL = 1.7%
    events = watch.observe(400, {"eval_loss": 1.25, "eval_runtime": 3.2}, total_steps=800)
    assert kinds(events) == [EVAL_RISING]
    message = events[0].message
    assert message.startswith("Eval loss rose to 1.25 at step 400, 4.2% above its best of 1.2 at step 200")
    assert "The best checkpoint is the one from step 200." in message
    assert "load_best_model_at_end" in message
    assert "Step 400/800 (50%)" in message


def test_exactly_2_percent_is_not_above_the_threshold():
    watch = TrainingWatch(eval_rise_percent=2.0)
    watch.observe(100, {"eval_loss": 1.0})
    assert watch.observe(200, {"eval_loss": 1.019}) == []
    assert kinds(watch.observe(300, {"eval_loss": 1.021})) == [EVAL_RISING]


def test_falling_eval_loss_is_no_warning():
    watch = TrainingWatch()
    assert [e for step, v in enumerate([2.0, 1.5, 1.2, 1.1, 1.05, 1.05, 1.0]) for e in
            watch.observe(100 * (step + 1), {"eval_loss": v})] == []


def test_eval_loss_rising_again_and_again_warns_once():
    watch = TrainingWatch()
    watch.observe(100, {"eval_loss": 1.0})
    events = []
    for step, value in [(200, 1.1), (300, 0.9), (400, 1.0), (500, 1.5)]:
        events += watch.observe(step, {"eval_loss": value})
    assert kinds(events) == [EVAL_RISING]


def test_the_threshold_is_configurable():
    watch = TrainingWatch(eval_rise_percent=10.0)
    watch.observe(100, {"eval_loss": 1.0})
    assert watch.observe(200, {"eval_loss": 1.08}) == []
    assert kinds(watch.observe(300, {"eval_loss": 1.11})) == [EVAL_RISING]


# --- stalls ----------------------------------------------------------------------------------------------------


def test_a_stall_is_recorded_once_with_the_last_step():
    watch = TrainingWatch()
    watch.observe(10, {"loss": 1.0}, total_steps=2000)
    event = watch.record_stall(900.0, 1200)
    assert event is not None and event.details["kind"] == STALL
    assert event.title == "Training Warning: stall"
    assert event.message.startswith("No training step for 15m 00s (last step 1200).")
    assert "Step 1200/2000 (60%)" in event.message
    assert watch.record_stall(1800.0, 1200) is None
    assert watch.warned == {STALL}


def test_a_stall_before_any_step_says_so():
    event = TrainingWatch().record_stall(60.0, None)
    assert event is not None
    assert event.message.startswith("No training step has completed in the 1m 00s since the watchdog started.")


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, "60"])
def test_record_stall_refuses_impossible_durations(seconds):
    with pytest.raises(ValueError, match="seconds_since_last_step"):
        TrainingWatch().record_stall(seconds, 10)


# --- one warning per kind per run ------------------------------------------------------------------------------


def test_already_warned_kinds_are_not_sent_again_after_a_resume():
    watch = TrainingWatch(already_warned=[NONFINITE, STALL, "something_else"])
    assert watch.observe(10, {"loss": math.nan}) == []
    assert watch.record_stall(1000.0, 10) is None
    watch.observe(20, {"eval_loss": 1.0})
    assert kinds(watch.observe(30, {"eval_loss": 2.0})) == [EVAL_RISING]
    assert watch.warned == {NONFINITE, STALL, EVAL_RISING, "something_else"}


def test_one_entry_can_carry_several_kinds():
    watch = TrainingWatch(spike_window=3)
    feed_losses(watch, [1.0, 1.0, 1.0])
    watch.observe(40, {"eval_loss": 1.0})
    events = watch.observe(50, {"loss": 5.0, "grad_norm": math.inf, "eval_loss": 1.5})
    assert kinds(events) == [NONFINITE, EVAL_RISING]  # a broken entry's loss is not measured for a spike
    assert kinds(watch.observe(60, {"loss": 5.0})) == [LOSS_SPIKE]


def test_unknown_keys_and_non_numeric_values_are_ignored():
    watch = TrainingWatch()
    entry = {"train_loss": math.nan, "eval_accuracy": math.inf, "learning_rate": math.nan, "epoch": "x",
             "loss": "nan", "grad_norm": None, "eval_loss": True, "total_flos": 1e18}
    assert watch.observe(10, entry) == []
    assert watch.observe(20, {}) == []


def test_numpy_style_numbers_count():
    class Real(float):  # stands in for numpy.float32 and friends: a numbers.Real that is not bool
        pass

    assert kinds(TrainingWatch().observe(10, {"grad_norm": Real("nan")})) == [NONFINITE]


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"spike_window": 1}, "spike_window"),
        ({"spike_window": 2.5}, "spike_window"),
        ({"spike_zscore": 0}, "spike_zscore"),
        ({"spike_zscore": math.nan}, "spike_zscore"),
        ({"spike_min_ratio": 0.9}, "spike_min_ratio"),
        ({"eval_rise_percent": -1}, "eval_rise_percent"),
        ({"already_warned": "nonfinite"}, "already_warned"),
        ({"already_warned": [3]}, "already_warned"),
    ],
)
def test_bad_settings_name_the_field(settings_, field):
    with pytest.raises(ValueError, match=field):
        TrainingWatch(**settings_)


def test_a_bad_step_names_the_field():
    with pytest.raises(ValueError, match="step"):
        TrainingWatch().observe(-1, {"loss": 1.0})
    with pytest.raises(ValueError, match="total_steps"):
        TrainingWatch().observe(1, {"loss": 1.0}, total_steps=0)


def test_importing_notify_does_not_load_apprise():
    code = "import sys, notify; notify.TrainingWatch; notify.StallWatchdog; assert 'apprise' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- properties -----------------------------------------------------------------------------------------------------

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
    st.integers(-(10**30), 10**30),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
keys = st.one_of(st.sampled_from(["loss", "grad_norm", "eval_loss", "learning_rate", "epoch"]), st.text(max_size=8))
log_dicts = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(0, 50), log_dicts), max_size=60),
    stalls=st.lists(st.tuples(st.integers(0, 59), st.floats(0, 1e6)), max_size=3),
    total=st.one_of(st.none(), st.integers(1, 10**6)),
    window=st.integers(2, 25),
)
def test_any_log_sequence_gives_each_kind_at_most_once_as_a_warning(entries, stalls, total, window):
    watch = TrainingWatch(spike_window=window)
    stall_at = dict(stalls)
    events, step = [], 0
    for i, (gap, metrics) in enumerate(entries):
        step += gap
        events += watch.observe(step, metrics, total_steps=total)
        if i in stall_at:
            stall = watch.record_stall(stall_at[i], step)
            events += [stall] if stall else []
    sent = kinds(events)
    assert len(sent) == len(set(sent))
    assert set(sent) == watch.warned
    for event in events:
        assert event.event_type is EventType.WARNING
        assert event.details["kind"] in WARNING_KINDS
        assert event.details["kind"] in event.title


non_increasing = st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=80).map(
    lambda xs: sorted(xs, reverse=True)
)


@settings(max_examples=300, deadline=None)
@given(losses=non_increasing, evals=non_increasing, window=st.integers(2, 25), grad=st.floats(0, 1e3))
def test_finite_non_increasing_losses_never_warn(losses, evals, window, grad):
    watch = TrainingWatch(spike_window=window)
    events = []
    for step, loss in enumerate(losses):
        events += watch.observe(step, {"loss": loss, "grad_norm": grad})
    for step, value in enumerate(evals):
        events += watch.observe(len(losses) + step, {"eval_loss": value, "epoch": 1.0})
    assert events == []


@settings(max_examples=150, deadline=None)
@given(already=st.sets(st.sampled_from(WARNING_KINDS)), entries=st.lists(log_dicts, max_size=40))
def test_already_warned_kinds_are_never_sent(already, entries):
    watch = TrainingWatch(spike_window=3, already_warned=already)
    events = [e for step, metrics in enumerate(entries) for e in watch.observe(step, metrics)]
    stall = watch.record_stall(1000.0, len(entries))
    events += [stall] if stall else []
    assert not set(kinds(events)) & already
    assert watch.warned >= already
