"""Notification events: what each kind says, its defaults, its validation, and its JSON form."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import notify
from notify import (
    DEFAULT_URGENCY,
    MILESTONES,
    EventType,
    NotificationEvent,
    Urgency,
    completion_event,
    error_event,
    format_duration,
    format_loss,
    start_event,
    warning_event,
)

PUBLIC_API = [
    "EventType",
    "Urgency",
    "MILESTONES",
    "NotificationEvent",
    "ProgressUpdate",
    "crossed_milestones",
    "milestone_event",
    "check_progress_milestone",
    "NotificationManager",
    "start_event",
    "warning_event",
    "error_event",
    "completion_event",
]


@pytest.mark.parametrize("name", PUBLIC_API)
def test_public_name_imports_from_notify(name):
    assert hasattr(notify, name)
    assert name in notify.__all__


def test_notify_does_not_import_heavy_or_sibling_packages():
    import sys

    import notify.events  # noqa: F401
    import notify.milestones  # noqa: F401

    # Delivery (notify.delivery.channels, notify.delivery) wraps apprise by design; nothing in notify touches MLflow,
    # torch or scoring, and the pure milestone modules do not touch apprise either.
    pure = {"notify", "notify._checks", "notify.events", "notify.formatting", "notify.milestones"}
    source_modules = [m for name, m in list(sys.modules.items()) if name.startswith("notify")]
    for module in source_modules:
        text = open(module.__file__, encoding="utf-8").read()
        forbidden = ["import mlflow", "import torch", "import scoring", "from scoring", "import tracking"]
        if module.__name__ in pure:
            forbidden.append("import apprise")
        for phrase in forbidden:
            assert phrase not in text, f"{module.__name__} must not {phrase!r}"


def test_enum_values_are_the_wire_strings():
    assert [e.value for e in EventType] == ["start", "progress", "warning", "error", "completion"]
    assert [u.value for u in Urgency] == ["low", "normal", "critical"]
    assert MILESTONES == (25, 50, 75, 100)


@pytest.mark.parametrize(
    ("event_type", "urgency"),
    [
        (EventType.START, Urgency.LOW),
        (EventType.PROGRESS, Urgency.LOW),
        (EventType.WARNING, Urgency.NORMAL),
        (EventType.COMPLETION, Urgency.NORMAL),
        (EventType.ERROR, Urgency.CRITICAL),
    ],
)
def test_default_urgency_and_sound_follow_the_event_type(event_type, urgency):
    event = NotificationEvent(title="t", message="m", event_type=event_type)
    assert event.urgency is urgency is DEFAULT_URGENCY[event_type]
    assert event.sound is (event_type is EventType.COMPLETION)


def test_string_values_are_accepted_for_enums():
    event = NotificationEvent(title="t", message="m", event_type="warning", urgency="critical")
    assert event.event_type is EventType.WARNING and event.urgency is Urgency.CRITICAL


INVALID_EVENTS = [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": None}, "title"),
    ({"message": ""}, "message"),
    ({"event_type": "party"}, "event_type"),
    ({"urgency": "loud"}, "urgency"),
    ({"milestone": 30}, "milestone"),
    ({"milestone": 0}, "milestone"),
    ({"milestone": True}, "milestone"),
    ({"current_step": -1}, "current_step"),
    ({"total_steps": -1}, "total_steps"),
    ({"current_step": 1.5}, "current_step"),
    ({"sound": True}, "sound"),  # a progress event may not make a sound
    ({"sound": "yes"}, "sound"),
    ({"details": {"loss": math.nan}}, "details"),
    ({"details": {"when": object()}}, "details"),
    ({"details": {1: "x"}}, "details"),
    ({"details": ["loss"]}, "details"),
]


@pytest.mark.parametrize(("override", "field_name"), INVALID_EVENTS)
def test_invalid_event_names_the_field(override, field_name):
    kwargs = {"title": "t", "message": "m", "event_type": EventType.PROGRESS, **override}
    with pytest.raises(ValueError, match=field_name):
        NotificationEvent(**kwargs)


@pytest.mark.parametrize("event_type", [t for t in EventType if t is not EventType.COMPLETION])
def test_only_completion_events_may_make_a_sound(event_type):
    with pytest.raises(ValueError, match="sound"):
        NotificationEvent(title="t", message="m", event_type=event_type, sound=True)
    assert NotificationEvent(title="t", message="m", event_type=EventType.COMPLETION, sound=False).sound is False


def test_events_are_immutable_values_even_in_their_details():
    facts = {"loss": 0.5}
    event = NotificationEvent(title="t", message="m", event_type=EventType.PROGRESS, details=facts)
    facts["loss"] = 9.0
    assert event.details["loss"] == 0.5
    with pytest.raises(TypeError):
        event.details["loss"] = 1.0  # type: ignore[index]
    assert event == NotificationEvent(title="t", message="m", event_type="progress", details={"loss": 0.5})
    assert hash(event) == hash(NotificationEvent(title="t", message="m", event_type="progress"))


def test_to_dict_uses_enum_values_and_from_dict_reads_it_back():
    event = completion_event(82, "Good", ["Train longer"], 1000, 1000, "http://127.0.0.1:5000/#/runs/abc")
    data = event.to_dict()
    assert data["event_type"] == "completion" and data["urgency"] == "normal"
    assert data["sound"] is True and data["milestone"] == 100
    assert NotificationEvent.from_dict(json.loads(json.dumps(data))) == event
    with pytest.raises(ValueError, match="unknown"):
        NotificationEvent.from_dict({**data, "colour": "red"})


# --- builders ----------------------------------------------------------------------------------------


def test_start_event_names_model_data_steps_and_where_to_watch():
    event = start_event("tiny-gpt2", "alpaca.jsonl", 1000, run_url="http://127.0.0.1:5000/#/runs/abc")
    assert event.title == "Training Started"
    assert event.event_type is EventType.START and event.urgency is Urgency.LOW and not event.sound
    for fact in ("tiny-gpt2", "alpaca.jsonl", "1000 steps", "http://127.0.0.1:5000/#/runs/abc"):
        assert fact in event.message
    assert (event.current_step, event.total_steps) == (0, 1000)
    assert "mlflow ui" in start_event("m", "d", 10).message


def test_warning_event_title_names_the_kind():
    event = warning_event("loss spike", "Loss jumped from 0.4 to 3.2.", 120, 1000)
    assert event.title == "Training Warning: loss spike"
    assert event.event_type is EventType.WARNING and event.urgency is Urgency.NORMAL and not event.sound
    assert "Loss jumped from 0.4 to 3.2." in event.message and "Step 120/1000 (12%)" in event.message
    with pytest.raises(ValueError, match="kind"):
        warning_event("", "x")


def test_error_event_is_critical_and_carries_the_traceback_tail():
    tail = 'File "train.py", line 3\nRuntimeError: CUDA out of memory'
    event = error_event("RuntimeError", "CUDA out of memory", 300, 1000, traceback_tail=tail)
    assert event.title == "Training Failed"
    assert event.event_type is EventType.ERROR and event.urgency is Urgency.CRITICAL and not event.sound
    assert "RuntimeError: CUDA out of memory" in event.message
    assert "Step 300/1000 (30%)" in event.message
    assert tail in event.message


def test_a_deliberate_stop_is_an_error_event_of_normal_urgency():
    event = error_event("KeyboardInterrupt", "", 40, 100, stopped=True)
    assert event.title == "Training Stopped"
    assert event.event_type is EventType.ERROR and event.urgency is Urgency.NORMAL
    assert "KeyboardInterrupt" in event.message


def test_error_event_never_raises_on_empty_texts_and_cuts_long_tracebacks():
    event = error_event("", "", traceback_tail="x" * 10_000)
    assert event.title == "Training Failed" and event.message
    assert len(event.message) < 2_000


def test_completion_event_carries_score_assessment_three_suggestions_and_url():
    event = completion_event(
        82,
        "Good - minor improvements possible",
        ["Train for more epochs", "Lower the learning rate", "Add eval data", "A fourth idea"],
        1000,
        1000,
        "http://127.0.0.1:5000/#/runs/abc",
    )
    assert event.title == "Training Complete! 🎉"
    assert event.event_type is EventType.COMPLETION and event.sound is True and event.milestone == 100
    assert "Quality score: 82/100 (Good - minor improvements possible)" in event.message
    assert event.message.count("• ") == 3 and "A fourth idea" not in event.message
    assert "http://127.0.0.1:5000/#/runs/abc" in event.message
    assert event.details["quality_score"] == 82


def test_completion_event_without_a_score_still_reads_well():
    event = completion_event(None, None)
    assert event.message and "Quality score" not in event.message
    with pytest.raises(ValueError, match="quality_score"):
        completion_event(120, "Impossible")


# --- formatting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (12, "12s"),
        (12.4, "12s"),
        (59.5, "1m 00s"),
        (185, "3m 05s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (3725, "1h 02m"),
        (90_000, "25h 00m"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_format_duration_refuses_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="seconds"):
        format_duration(bad)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.352149, "0.3521"), (2.1, "2.1"), (0.35, "0.35"), (1.23456, "1.235"), (12345.6, "1.235e+04"), (0, "0")],
)
def test_format_loss_keeps_four_significant_digits(value, text):
    assert format_loss(value) == text


# --- properties ---------------------------------------------------------------------------------------

steps = st.one_of(st.none(), st.integers(0, 10**6))
texts = st.text(min_size=1, max_size=40).filter(str.strip)


def any_event():
    return st.one_of(
        st.builds(start_event, texts, texts, st.integers(1, 10**6), st.one_of(st.none(), texts)),
        st.builds(warning_event, texts, texts, steps, steps),
        st.builds(error_event, st.text(max_size=20), st.text(max_size=40), steps, steps, st.text(), st.booleans()),
        st.builds(
            completion_event,
            st.one_of(st.none(), st.floats(0, 100)),
            st.one_of(st.none(), texts),
            st.lists(texts, max_size=5),
            steps,
            steps,
            st.one_of(st.none(), texts),
        ),
    )


@settings(max_examples=300)
@given(any_event())
def test_sound_is_true_exactly_for_completion_events(event):
    assert event.sound is (event.event_type is EventType.COMPLETION)


@settings(max_examples=300)
@given(any_event())
def test_every_event_round_trips_through_json(event):
    data = json.loads(json.dumps(event.to_dict(), allow_nan=False))
    assert data == event.to_dict()
    assert NotificationEvent.from_dict(data) == event


@settings(max_examples=200)
@given(any_event())
def test_every_built_event_has_a_title_a_message_and_the_default_urgency_unless_stopped(event):
    assert event.title.strip() and event.message.strip()
    if not (event.event_type is EventType.ERROR and event.details.get("stopped")):
        assert event.urgency is DEFAULT_URGENCY[event.event_type]


def parse_duration(text: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([hms])", text))


@settings(max_examples=200)
@given(st.floats(0, 10**7))
def test_format_duration_is_exact_to_its_smallest_shown_unit(seconds):
    text = format_duration(seconds)
    shown = parse_duration(text)
    assert re.fullmatch(r"\d+h \d\dm|\d{1,2}m \d\ds|\d{1,2}s", text)
    if "h" in text:  # the seconds are dropped
        assert -0.5 <= seconds - shown < 60
    else:  # to the nearest second
        assert abs(seconds - shown) <= 0.5
