"""Training warnings: NaN/inf, loss spikes, rising eval loss and stalls, each sent at most once per run.

``TrainingWatch`` owns the advice, the once-per-kind policy, resume (``already_warned``) and the stall
warning; what counts as a spike, a rising eval loss or a numerical breakdown is ``scoring.LiveRules``'s
business and is tested in ``test_scoring_live.py``. Here the watch always runs with the real rules.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
from histories import decaying
from hypothesis import example, given, settings
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
from scoring import LiveRules, Thresholds


def kinds(events) -> list[str]:
    return [event.details["kind"] for event in events]


def watch_with_rules(**kwargs) -> TrainingWatch:
    return TrainingWatch(rules=LiveRules(), **kwargs)


def healthy_losses(n: int, seed: int = 0) -> list[float]:
    """A decaying fine-tuning loss with 2% multiplicative noise (no spikes, no breakdown)."""
    return [float(v) for v in decaying(n, start=2.0, floor=0.6, rate=3.0, noise=0.02, seed=seed)[1]]


def feed_losses(watch: TrainingWatch, losses, first_step: int = 10, every: int = 10) -> list:
    events = []
    for i, loss in enumerate(losses):
        events += watch.observe(first_step + i * every, {"loss": loss, "grad_norm": 1.0, "learning_rate": 2e-4})
    return events


# Evaluations that fall to a best of 1.2 at step 200 and then rise durably (two evaluations clearly above it).
OVERFITTING_EVALS = [(100, 1.30), (200, 1.20), (300, 1.22), (400, 1.25), (500, 1.26)]


def feed_evals(watch: TrainingWatch, evals, total_steps: int | None = None) -> list:
    events = []
    for step, value in evals:
        events += watch.observe(step, {"eval_loss": value, "eval_runtime": 3.2}, total_steps=total_steps)
    return events


# --- the kinds -------------------------------------------------------------------------------------------


def test_the_kinds_are_one_table_with_advice_for_each():
    assert WARNING_KINDS == (NONFINITE, LOSS_SPIKE, EVAL_RISING, STALL)
    assert (NONFINITE, LOSS_SPIKE, EVAL_RISING, STALL) == ("nonfinite", "loss_spike", "eval_rising", "stall")
    assert set(WARNING_ADVICE) == set(WARNING_KINDS)


# --- non-finite values: the rule's finding plus the advice -----------------------------------------------


def test_nan_loss_is_a_numerical_breakdown_naming_the_gradient_norm():
    events = watch_with_rules().observe(120, {"loss": math.nan, "grad_norm": math.inf}, total_steps=1000)
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


def test_a_lone_inf_gradient_norm_is_a_skipped_step_but_repeated_ones_warn_with_their_count():
    # fp16 loss scaling skips a step now and then (inf gradient norm, finite loss): harmless once.
    watch = watch_with_rules()
    assert watch.observe(40, {"loss": 1.25, "grad_norm": math.inf}) == []
    events = watch.observe(50, {"loss": 1.24, "grad_norm": math.inf})
    assert kinds(events) == [NONFINITE]
    message = events[0].message
    assert message.startswith("Gradient norm is inf at step 50 (2 non-finite gradient norms so far;")
    assert WARNING_ADVICE[NONFINITE] in message


def test_negative_infinite_loss_is_non_finite():
    events = watch_with_rules().observe(5, {"loss": -math.inf})
    assert kinds(events) == [NONFINITE]
    assert "Loss is -inf at step 5." in events[0].message


def test_zero_loss_beside_a_nan_gradient_norm_is_a_breakdown_not_a_perfect_fit():
    watch = watch_with_rules()
    assert feed_losses(watch, healthy_losses(30)) == []
    events = watch.observe(310, {"loss": 0.0, "grad_norm": math.nan})
    assert kinds(events) == [NONFINITE]
    message = events[0].message
    assert "Loss is 0.0 at step 310 with a NaN gradient norm" in message
    assert "numerical breakdown, not a perfect fit" in message
    assert "lower the learning rate or enable gradient clipping" in message


def test_nan_eval_loss_is_non_finite():
    events = watch_with_rules().observe(500, {"eval_loss": math.nan, "epoch": 1.0})
    assert kinds(events) == [NONFINITE]
    assert "Eval loss is NaN at step 500." in events[0].message


def test_non_finite_values_warn_once_however_often_they_repeat():
    watch = watch_with_rules()
    events = []
    for step in range(10, 200, 10):
        events += watch.observe(step, {"loss": math.nan, "grad_norm": math.nan})
        events += watch.observe(step + 5, {"eval_loss": math.inf})
    assert kinds(events) == [NONFINITE]
    assert watch.warned == {NONFINITE}


# --- loss spikes ---------------------------------------------------------------------------------------------


def test_a_spike_after_30_healthy_points_warns_once_with_its_numbers():
    watch = watch_with_rules()
    losses = healthy_losses(30)
    assert feed_losses(watch, losses) == []
    window_median = statistics.median(losses[-20:])
    events = watch.observe(310, {"loss": 9.0, "grad_norm": 40.0}, total_steps=1000)
    assert kinds(events) == [LOSS_SPIKE]
    event = events[0]
    assert event.title == "Training Warning: loss_spike"
    assert event.message.startswith(
        f"Loss spiked to 9 at step 310, far above the median of the previous 20 logged values "
        f"({window_median:.4g}) and beyond their noise. {WARNING_ADVICE[LOSS_SPIKE]}"
    )
    assert "Step 310/1000 (31%)" in event.message
    assert watch.observe(320, {"loss": 12.0}) == []  # a second spike is the same warning
    assert watch.warned == {LOSS_SPIKE}


# --- rising eval loss ------------------------------------------------------------------------------------------


def test_a_durable_eval_rise_names_the_best_step_and_the_checkpoint():
    watch = watch_with_rules()
    assert feed_evals(watch, OVERFITTING_EVALS[:-1], total_steps=800) == []  # one evaluation above is not durable
    events = feed_evals(watch, OVERFITTING_EVALS[-1:], total_steps=800)
    assert kinds(events) == [EVAL_RISING]
    message = events[0].message
    assert message.startswith(
        "Eval loss rose to 1.26 at step 500, 5.0% above its best of 1.2 at step 200, for 2 evaluations in a row"
    )
    assert "The best checkpoint is the one from step 200." in message
    assert "load_best_model_at_end" in message
    assert "Step 500/800 (62%)" in message


def test_eval_loss_rising_again_and_again_warns_once():
    watch = watch_with_rules()
    events = feed_evals(watch, OVERFITTING_EVALS)
    assert kinds(events) == [EVAL_RISING]
    # It keeps rising (LiveRules still finds it), falls back, and rises again: no second warning.
    assert feed_evals(watch, [(600, 1.30), (700, 1.35), (800, 1.10), (900, 1.40), (1000, 1.50)]) == []
    assert watch.warned == {EVAL_RISING}


# --- without rules: stalls only ----------------------------------------------------------------------------------


def test_without_rules_only_stalls_are_reported():
    watch = TrainingWatch()
    events = feed_losses(watch, healthy_losses(30)) + watch.observe(310, {"loss": 9.0, "grad_norm": 40.0})
    events += watch.observe(320, {"loss": math.nan, "grad_norm": math.nan})
    events += feed_evals(watch, OVERFITTING_EVALS)
    assert events == []
    assert watch.warned == frozenset()
    assert kinds([watch.record_stall(900.0, 320)]) == [STALL]


# --- stalls ----------------------------------------------------------------------------------------------------


def test_a_stall_is_recorded_once_with_the_last_step():
    watch = watch_with_rules()
    watch.observe(10, {"loss": 1.0}, total_steps=2000)
    event = watch.record_stall(900.0, 1200)
    assert event is not None and event.details["kind"] == STALL
    assert event.title == "Training Warning: stall"
    assert event.message.startswith("No training step for 15m 00s (last step 1200).")
    assert "Step 1200/2000 (60%)" in event.message
    assert watch.record_stall(1800.0, 1200) is None
    assert watch.warned == {STALL}


def test_a_stall_before_any_step_says_so():
    event = watch_with_rules().record_stall(60.0, None)
    assert event is not None
    assert event.message.startswith("No training step has completed in the 1m 00s since the watchdog started.")


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, "60"])
def test_record_stall_refuses_impossible_durations(seconds):
    with pytest.raises(ValueError, match="seconds_since_last_step"):
        watch_with_rules().record_stall(seconds, 10)


# --- one warning per kind per run ------------------------------------------------------------------------------


def test_already_warned_kinds_are_not_sent_again_after_a_resume():
    watch = watch_with_rules(already_warned=[NONFINITE, STALL, "something_else"])
    assert watch.observe(10, {"loss": math.nan}) == []
    assert watch.observe(15, {"eval_loss": math.nan}) == []
    assert watch.record_stall(1000.0, 10) is None
    assert kinds(feed_evals(watch, OVERFITTING_EVALS)) == [EVAL_RISING]  # a kind not sent before still is
    assert watch.warned == {NONFINITE, STALL, EVAL_RISING, "something_else"}


def test_one_entry_can_carry_several_kinds():
    watch = watch_with_rules()
    assert feed_losses(watch, healthy_losses(30), first_step=3, every=3) == []  # steps 3..90
    assert feed_evals(watch, OVERFITTING_EVALS[:-1]) == []
    events = watch.observe(500, {"loss": math.nan, "grad_norm": math.nan, "eval_loss": 1.26})
    assert kinds(events) == [NONFINITE, EVAL_RISING]  # a broken entry's loss is not measured for a spike
    assert kinds(watch.observe(520, {"loss": 9.0, "grad_norm": 1.0})) == [LOSS_SPIKE]
    assert watch.warned == {NONFINITE, EVAL_RISING, LOSS_SPIKE}


def test_unknown_keys_and_non_numeric_values_are_ignored():
    watch = watch_with_rules()
    entry = {"train_loss": math.nan, "eval_accuracy": math.inf, "learning_rate": math.nan, "epoch": "x",
             "loss": "nan", "grad_norm": None, "eval_loss": True, "total_flos": 1e18}
    assert watch.observe(10, entry) == []
    assert watch.observe(20, {}) == []
    # The same entry with a real NaN under a key the watch reads does warn: the values above were ignored.
    assert kinds(watch.observe(30, {**entry, "loss": math.nan})) == [NONFINITE]


@pytest.mark.parametrize("make", [np.float32, np.float64, "subclass"])
def test_numpy_style_numbers_count(make):
    class Real(float):  # a numbers.Real that is not a float's exact type and not bool
        pass

    number = Real if make == "subclass" else make
    assert kinds(watch_with_rules().observe(10, {"loss": number("nan")})) == [NONFINITE]
    assert kinds(watch_with_rules().observe(10, {"eval_loss": number("inf")})) == [NONFINITE]


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"rules": object()}, "rules"),
        ({"rules": Thresholds()}, "rules"),  # thresholds are not rules: they go into LiveRules(thresholds)
        ({"rules": "LiveRules"}, "rules"),
        ({"already_warned": "nonfinite"}, "already_warned"),
        ({"already_warned": [3]}, "already_warned"),
        ({"already_warned": [" "]}, "already_warned"),
    ],
)
def test_bad_settings_name_the_field(settings_, field):
    with pytest.raises(ValueError, match=field):
        TrainingWatch(**settings_)


def test_a_bad_step_names_the_field():
    with pytest.raises(ValueError, match="step"):
        watch_with_rules().observe(-1, {"loss": 1.0})
    with pytest.raises(ValueError, match="total_steps"):
        watch_with_rules().observe(1, {"loss": 1.0}, total_steps=0)


def test_importing_notify_does_not_load_apprise():
    code = (
        "import sys, notify; notify.TrainingWatch; notify.check_progress_milestone; "
        "assert 'apprise' not in sys.modules, 'apprise'; assert 'scoring' not in sys.modules, 'scoring'"
    )
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
    watch = TrainingWatch(rules=LiveRules(Thresholds(spike_window=window)))
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
# found by hypothesis: the median of two losses near -9e307 overflowed to -inf and the next one was a "spike"
@example(losses=[-8.988465674311579e+307, -8.98846567431158e+307, -8.98846567431158e+307], evals=[], window=2,
         grad=0.0)
def test_finite_non_increasing_losses_and_evals_never_warn(losses, evals, window, grad):
    watch = TrainingWatch(rules=LiveRules(Thresholds(spike_window=window)))
    events = []
    for step, loss in enumerate(losses):
        events += watch.observe(step, {"loss": loss, "grad_norm": grad})
    for step, value in enumerate(evals):
        events += watch.observe(len(losses) + step, {"eval_loss": value, "epoch": 1.0})
    assert events == []


@settings(max_examples=150, deadline=None)
@given(already=st.sets(st.sampled_from(WARNING_KINDS)), entries=st.lists(log_dicts, max_size=40))
def test_already_warned_kinds_are_never_sent(already, entries):
    watch = TrainingWatch(rules=LiveRules(Thresholds(spike_window=3)), already_warned=already)
    events = [e for step, metrics in enumerate(entries) for e in watch.observe(step, metrics)]
    stall = watch.record_stall(1000.0, len(entries))
    events += [stall] if stall else []
    assert not set(kinds(events)) & already
    assert watch.warned >= already
