"""Milestones: which update crosses 25/50/75/100%, and that a run never sends one twice."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notify import (
    MILESTONE_TITLES,
    MILESTONES,
    EventType,
    NotificationManager,
    ProgressUpdate,
    check_progress_milestone,
    crossed_milestones,
    milestone_event,
)


def reached(milestone: int, step: int, total: int) -> bool:
    """The specification: m% is reached once step/total >= m/100 (stated without division)."""
    return milestone * total <= step * 100


def milestones_reached_by(step: int, total: int) -> list[int]:
    return [m for m in MILESTONES if reached(m, step, total)]


# --- crossing: examples at every boundary -------------------------------------------------------------

CROSSING_CASES = [
    # (previous, current, total, crossed)
    (249, 250, 1000, (25,)),  # exactly 25%
    (248, 249, 1000, ()),  # one step short
    (499, 500, 1000, (50,)),  # the product-spec example
    (749, 750, 1000, (75,)),
    (999, 1000, 1000, (100,)),
    (0, 1000, 1000, (25, 50, 75, 100)),  # one jump over everything
    (0, 0, 1000, ()),
    (500, 500, 1000, ()),  # no movement crosses nothing
    (250, 251, 1000, ()),  # just after a milestone: already crossed before
    (100, 800, 1000, (25, 50, 75)),
    (0, 1, 3, (25,)),  # 33%: total not divisible by 4
    (1, 2, 3, (50,)),  # 66%
    (2, 3, 3, (75, 100)),
    (0, 1, 7, ()),  # 14%
    (1, 2, 7, (25,)),  # 28.6%
    (2, 3, 7, ()),  # 42.9%
    (3, 4, 7, (50,)),  # 57.1%
    (4, 5, 7, ()),  # 71.4%
    (5, 6, 7, (75,)),  # 85.7%
    (6, 7, 7, (100,)),
    (0, 1, 1, (25, 50, 75, 100)),  # a one-step run
    (0, 1, 2, (25, 50)),
    (1, 2, 2, (75, 100)),
    (0, 1, 4, (25,)),
    (2, 3, 4, (75,)),
]


@pytest.mark.parametrize(("previous", "current", "total", "crossed"), CROSSING_CASES)
def test_crossed_milestones_at_boundaries(previous, current, total, crossed):
    progress = ProgressUpdate(current_step=current, total_steps=total, previous_step=previous)
    assert crossed_milestones(progress) == crossed


def test_previous_step_defaults_to_the_step_before():
    assert ProgressUpdate(current_step=250, total_steps=1000).previous_step == 249
    assert ProgressUpdate(current_step=0, total_steps=1000).previous_step == 0
    assert crossed_milestones(ProgressUpdate(current_step=250, total_steps=1000)) == (25,)


def test_product_spec_example_returns_the_halfway_notification():
    n = check_progress_milestone(ProgressUpdate(current_step=500, total_steps=1000, previous_step=499))
    assert n is not None
    assert n.title == "Training Halfway There!"
    assert n.message
    assert "Step 500/1000 (50%)" in n.message
    assert f"{n.title}: {n.message}".startswith("Training Halfway There!: ")
    assert (n.milestone, n.current_step, n.total_steps) == (50, 500, 1000)
    assert n.event_type is EventType.PROGRESS
    assert n.sound is False


def test_check_progress_milestone_returns_none_when_nothing_is_crossed():
    assert check_progress_milestone(ProgressUpdate(current_step=501, total_steps=1000, previous_step=500)) is None


def test_check_progress_milestone_returns_the_highest_of_several_crossed():
    n = check_progress_milestone(ProgressUpdate(current_step=800, total_steps=1000, previous_step=0))
    assert n.milestone == 75
    assert n.title == "Training 75% Complete"


@pytest.mark.parametrize("milestone", MILESTONES)
def test_milestone_titles_are_the_product_titles(milestone):
    expected = {
        25: "Training 25% Complete",
        50: "Training Halfway There!",
        75: "Training 75% Complete",
        100: "Training Complete! 🎉",
    }
    event = milestone_event(milestone, ProgressUpdate(current_step=1000, total_steps=1000))
    assert event.title == expected[milestone] == MILESTONE_TITLES[milestone]


def test_milestone_message_carries_loss_elapsed_and_eta():
    progress = ProgressUpdate(
        current_step=500, total_steps=1000, loss=0.352149, eval_loss=0.41, elapsed_seconds=185
    )
    event = milestone_event(50, progress)
    assert "Step 500/1000 (50%)" in event.message
    assert "Loss: 0.3521, eval loss: 0.41" in event.message
    assert "Elapsed: 3m 05s, about 3m 05s left" in event.message
    assert event.details["loss"] == 0.352149
    assert event.details["eval_loss"] == 0.41
    assert event.details["eta_seconds"] == 185
    assert event.details["elapsed_seconds"] == 185


def test_milestone_message_leaves_out_unknown_numbers():
    event = milestone_event(25, ProgressUpdate(current_step=250, total_steps=1000))
    assert "Loss" not in event.message and "Elapsed" not in event.message
    assert set(event.details) == {"percent"}


def test_hundred_percent_milestone_is_the_completion_event_with_the_score():
    event = milestone_event(100, ProgressUpdate(current_step=1000, total_steps=1000, quality_score=82))
    assert event.event_type is EventType.COMPLETION
    assert event.sound is True
    assert event.title == "Training Complete! 🎉"
    assert "Quality score: 82/100" in event.message
    assert event.details["quality_score"] == 82


def test_milestone_event_refuses_a_value_that_is_not_a_milestone():
    with pytest.raises(ValueError, match="milestone"):
        milestone_event(33, ProgressUpdate(current_step=1, total_steps=3))


# --- ProgressUpdate validation -----------------------------------------------------------------------

INVALID_UPDATES = [
    # (kwargs, field named in the error)
    ({"current_step": 0, "total_steps": 0}, "total_steps"),
    ({"current_step": 0, "total_steps": -5}, "total_steps"),
    ({"current_step": -1, "total_steps": 10}, "current_step"),
    ({"current_step": 5, "total_steps": 10, "previous_step": -1}, "previous_step"),
    ({"current_step": 11, "total_steps": 10}, "current_step"),
    ({"current_step": 5, "total_steps": 10, "previous_step": 6}, "previous_step"),
    ({"current_step": 2.5, "total_steps": 10}, "current_step"),
    ({"current_step": True, "total_steps": 10}, "current_step"),
    ({"current_step": 1, "total_steps": True}, "total_steps"),
    ({"current_step": 1, "total_steps": 10.0}, "total_steps"),
    ({"current_step": 1, "total_steps": 10, "previous_step": False}, "previous_step"),
    ({"current_step": "5", "total_steps": 10}, "current_step"),
    ({"current_step": 1, "total_steps": 10, "loss": math.nan}, "loss"),
    ({"current_step": 1, "total_steps": 10, "loss": math.inf}, "loss"),
    ({"current_step": 1, "total_steps": 10, "loss": "0.3"}, "loss"),
    ({"current_step": 1, "total_steps": 10, "eval_loss": math.nan}, "eval_loss"),
    ({"current_step": 1, "total_steps": 10, "eval_loss": -math.inf}, "eval_loss"),
    ({"current_step": 1, "total_steps": 10, "elapsed_seconds": math.nan}, "elapsed_seconds"),
    ({"current_step": 1, "total_steps": 10, "elapsed_seconds": math.inf}, "elapsed_seconds"),
    ({"current_step": 1, "total_steps": 10, "elapsed_seconds": -1.0}, "elapsed_seconds"),
    ({"current_step": 1, "total_steps": 10, "quality_score": -0.1}, "quality_score"),
    ({"current_step": 1, "total_steps": 10, "quality_score": 100.5}, "quality_score"),
    ({"current_step": 1, "total_steps": 10, "quality_score": math.nan}, "quality_score"),
]


@pytest.mark.parametrize(("kwargs", "field_name"), INVALID_UPDATES)
def test_invalid_progress_update_names_the_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        ProgressUpdate(**kwargs)


def test_progress_update_accepts_the_edges_of_each_range():
    progress = ProgressUpdate(
        current_step=10, total_steps=10, previous_step=10, loss=-0.5, elapsed_seconds=0.0, quality_score=100
    )
    assert progress.percent == 100.0
    assert progress.eta_seconds == 0.0
    assert ProgressUpdate(current_step=0, total_steps=10, quality_score=0).quality_score == 0


def test_eta_needs_elapsed_time_and_a_first_step():
    assert ProgressUpdate(current_step=250, total_steps=1000).eta_seconds is None
    assert ProgressUpdate(current_step=0, total_steps=1000, elapsed_seconds=5).eta_seconds is None
    assert ProgressUpdate(current_step=250, total_steps=1000, elapsed_seconds=60).eta_seconds == 180


def test_after_a_resume_the_eta_counts_only_the_steps_done_since():
    # resumed at step 600: 100 steps in 60 s, 300 to go -> 180 s, not 60 * 300 / 700
    resumed = ProgressUpdate(current_step=700, total_steps=1000, elapsed_seconds=60, start_step=600)
    assert resumed.eta_seconds == 180
    assert ProgressUpdate(current_step=600, total_steps=1000, elapsed_seconds=5, start_step=600).eta_seconds is None
    event = NotificationManager(1000, start_step=600).update(750, elapsed_seconds=150)[0]
    assert event.milestone == 75 and event.details["eta_seconds"] == 250
    with pytest.raises(ValueError, match="start_step"):
        ProgressUpdate(current_step=5, total_steps=10, start_step=6)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.data())
def test_the_eta_is_the_remaining_steps_at_the_pace_since_the_start_step(total, data):
    start = data.draw(st.integers(0, total - 1))
    current = data.draw(st.integers(start + 1, total))
    seconds_per_step = data.draw(st.floats(0.001, 100.0))
    progress = ProgressUpdate(current_step=current, total_steps=total, start_step=start,
                              elapsed_seconds=seconds_per_step * (current - start))
    assert progress.eta_seconds == pytest.approx(seconds_per_step * (total - current), rel=1e-9, abs=1e-9)


# --- NotificationManager: examples -------------------------------------------------------------------


def test_manager_sends_a_jump_over_several_milestones_once_each_in_order():
    manager = NotificationManager(1000)
    events = manager.update(800)
    assert [e.milestone for e in events] == [25, 50, 75]
    assert manager.update(800) == []
    assert manager.update(900) == []
    assert manager.sent_milestones == {25, 50, 75}


def test_manager_skips_milestones_already_sent_before_a_resume():
    manager = NotificationManager(1000, already_sent=(25, 50))
    assert [e.milestone for e in manager.update(760)] == [75]


def test_manager_start_step_treats_earlier_milestones_as_passed():
    manager = NotificationManager(1000, start_step=600)
    assert [e.milestone for e in manager.update(601)] == []
    assert [e.milestone for e in manager.update(750)] == [75]


def test_manager_going_backwards_sends_nothing_already_sent():
    manager = NotificationManager(100)
    assert [e.milestone for e in manager.update(60)] == [25, 50]
    assert manager.update(10) == []
    assert manager.update(55) == []
    assert [e.milestone for e in manager.update(80)] == [75]


def test_manager_check_covers_the_gap_since_the_last_step_it_saw():
    manager = NotificationManager(1000)
    manager.update(200)
    # previous_step defaults to 499, but the manager last saw 200, so 25% is not lost
    events = manager.check(ProgressUpdate(current_step=500, total_steps=1000))
    assert [e.milestone for e in events] == [25, 50]


def test_manager_refuses_an_update_for_another_total():
    manager = NotificationManager(1000)
    with pytest.raises(ValueError, match="total_steps"):
        manager.check(ProgressUpdate(current_step=5, total_steps=10))


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "already_sent": (30,)}, "already_sent"),
        ({"total_steps": 10, "start_step": 11}, "start_step"),
        ({"total_steps": 10, "start_step": -1}, "start_step"),
    ],
)
def test_invalid_manager_arguments_name_the_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        NotificationManager(**kwargs)


def test_manager_update_validates_like_progress_update():
    manager = NotificationManager(10)
    with pytest.raises(ValueError, match="current_step"):
        manager.update(11)
    with pytest.raises(ValueError, match="loss"):
        manager.update(5, loss=math.nan)


def test_held_completion_waits_for_the_final_score_and_is_sent_once():
    manager = NotificationManager(100)
    events = manager.update(100, loss=0.3, hold_completion=True)
    assert [e.milestone for e in events] == [25, 50, 75]
    assert manager.completion_pending
    assert 100 not in manager.sent_milestones
    done = manager.complete(82, "Good - minor improvements possible", extra_lines=["Report: quality/report.md"])
    assert done is not None
    assert done.milestone == 100 and done.sound is True
    assert "Quality score: 82/100 (Good - minor improvements possible)" in done.message
    assert "Report: quality/report.md" in done.message
    assert "Loss: 0.3" in done.message
    assert not manager.completion_pending
    assert manager.complete(90) is None
    assert manager.update(100) == []
    assert [e.milestone for e in manager.notifications] == [25, 50, 75, 100]


def test_complete_returns_none_when_completion_was_already_sent():
    manager = NotificationManager(100)
    assert [e.milestone for e in manager.update(100)] == [25, 50, 75, 100]
    assert manager.complete(82) is None
    assert NotificationManager(100, already_sent=(100,)).complete(82) is None


def test_complete_after_an_early_stop_reports_the_step_reached():
    manager = NotificationManager(1000)
    manager.update(800)
    done = manager.complete(70, "Fair")
    assert (done.current_step, done.total_steps) == (800, 1000)
    assert "Step 800/1000 (80%)" in done.message


def test_record_keeps_other_events_in_order_and_refuses_a_second_milestone():
    from notify import error_event, start_event

    manager = NotificationManager(100)
    start = manager.record(start_event("tiny-gpt2", "alpaca.jsonl", 100))
    [quarter] = manager.update(25)
    crash = manager.record(error_event("RuntimeError", "CUDA out of memory", 30, 100))
    assert manager.notifications == (start, quarter, crash)
    with pytest.raises(ValueError, match="already sent"):
        manager.record(quarter)


# --- properties ---------------------------------------------------------------------------------------

totals = st.one_of(st.integers(1, 12), st.integers(1, 100_000))


@st.composite
def runs(draw, max_total=None):
    """A total and a non-decreasing sequence of steps in [0, total], jumps included."""
    total = draw(st.integers(1, max_total) if max_total else totals)
    steps = sorted(draw(st.lists(st.integers(0, total), max_size=12)))
    return total, steps


@settings(max_examples=300)
@given(runs())
def test_every_crossed_milestone_is_notified_exactly_once(run):
    total, steps = run
    manager = NotificationManager(total)
    emitted = [event for step in steps for event in manager.update(step)]
    last = steps[-1] if steps else 0
    assert [e.milestone for e in emitted] == milestones_reached_by(last, total)
    assert manager.sent_milestones == set(milestones_reached_by(last, total))
    assert list(manager.notifications) == emitted


@settings(max_examples=300)
@given(runs())
def test_each_milestone_is_sent_at_the_first_update_that_reaches_it(run):
    total, steps = run
    manager = NotificationManager(total)
    for step in steps:
        for event in manager.update(step):
            m = event.milestone
            first_step_reaching_m = next(s for s in steps if reached(m, s, total))
            assert step == first_step_reaching_m
            assert (event.current_step, event.total_steps) == (step, total)
            assert event.title == MILESTONE_TITLES[m]
            expected_type = EventType.COMPLETION if m == 100 else EventType.PROGRESS
            assert event.event_type is expected_type
            assert event.message


@settings(max_examples=200)
@given(runs())
def test_no_notification_when_no_milestone_is_reached(run):
    total, steps = run
    below_first = [s for s in steps if not reached(MILESTONES[0], s, total)]
    manager = NotificationManager(total)
    assert [event for step in below_first for event in manager.update(step)] == []


@settings(max_examples=200)
@given(runs(max_total=400))
def test_jumps_notify_the_same_milestones_as_walking_every_step(run):
    total, steps = run
    jumping, walking = NotificationManager(total), NotificationManager(total)
    jumped = [e.milestone for step in steps for e in jumping.update(step)]
    walked = [e.milestone for step in range((steps[-1] if steps else 0) + 1) for e in walking.update(step)]
    assert jumped == walked


@settings(max_examples=300)
@given(totals.flatmap(lambda total: st.tuples(st.just(total), st.lists(st.integers(0, total), max_size=15))))
def test_steps_in_any_order_never_repeat_a_milestone(run):
    total, steps = run
    manager = NotificationManager(total)
    sent = [event.milestone for step in steps for event in manager.update(step)]
    highest = max(steps, default=0)
    assert sorted(sent) == sorted(set(sent))
    assert set(sent) == set(milestones_reached_by(highest, total))


@st.composite
def resumed_runs(draw):
    """A run, then a second process resuming from an earlier step and going on (maybe further)."""
    total, first = draw(runs())
    restart = draw(st.integers(0, first[-1] if first else 0))
    second = sorted(draw(st.lists(st.integers(restart, total), max_size=12)))
    return total, first, restart, second


@settings(max_examples=300)
@given(resumed_runs(), st.booleans())
def test_a_resumed_run_never_sends_a_milestone_twice(run, resume_at_restart_step):
    total, first, restart, second = run
    before = NotificationManager(total)
    sent_before = [e.milestone for step in first for e in before.update(step)]
    start_step = restart if resume_at_restart_step else 0
    after = NotificationManager(total, already_sent=before.sent_milestones, start_step=start_step)
    sent_after = [e.milestone for step in [restart, *second] for e in after.update(step)]
    everything = sent_before + sent_after
    assert len(everything) == len(set(everything))
    highest = max(first + second, default=0)
    assert set(everything) == set(milestones_reached_by(highest, total))
    assert sent_after == sorted(sent_after)


@settings(max_examples=200)
@given(runs(), st.integers(0, 100))
def test_held_completion_is_sent_by_complete_exactly_once(run, score):
    total, steps = run
    manager = NotificationManager(total)
    for step in [*steps, total]:
        assert all(e.milestone != 100 for e in manager.update(step, hold_completion=True))
    assert manager.completion_pending
    done = manager.complete(score)
    assert done.milestone == 100 and done.details["quality_score"] == score
    assert manager.complete(score) is None
    assert [e.milestone for e in manager.notifications].count(100) == 1


progress_numbers = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32))


@st.composite
def progress_updates(draw):
    total = draw(totals)
    current = draw(st.integers(0, total))
    previous = draw(st.one_of(st.none(), st.integers(0, current)))
    return ProgressUpdate(
        current_step=current,
        total_steps=total,
        previous_step=previous,
        loss=draw(progress_numbers),
        eval_loss=draw(progress_numbers),
        elapsed_seconds=draw(st.one_of(st.none(), st.floats(0, 10**7))),
        quality_score=draw(st.one_of(st.none(), st.floats(0, 100))),
    )


@settings(max_examples=300)
@given(progress_updates())
def test_check_progress_milestone_reports_the_highest_milestone_newly_reached(progress):
    newly = [
        m
        for m in MILESTONES
        if reached(m, progress.current_step, progress.total_steps)
        and not reached(m, progress.previous_step, progress.total_steps)
    ]
    event = check_progress_milestone(progress)
    assert list(crossed_milestones(progress)) == newly
    if newly:
        assert event.milestone == max(newly)
        assert event.title == MILESTONE_TITLES[max(newly)]
    else:
        assert event is None


@settings(max_examples=300)
@given(progress_updates(), st.sampled_from(MILESTONES))
def test_milestone_events_sound_only_on_completion_and_survive_json(progress, milestone):
    event = milestone_event(milestone, progress)
    assert event.sound is (event.event_type is EventType.COMPLETION)
    assert event.sound is (milestone == 100)
    as_json = json.dumps(event.to_dict(), allow_nan=False)
    assert json.loads(as_json) == event.to_dict()
    assert 0 <= progress.percent <= 100
    assert progress.eta_seconds is None or progress.eta_seconds >= 0
