"""The stall watchdog: one call when training steps stop coming, never more, and a stop that is immediate."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from notify import STALL, StallWatchdog, TrainingWatch


class FakeClock:
    """Seconds that move only when the test says so; the watchdog thread reads them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Stalls:
    """Records on_stall calls and lets a test wait for the first one."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int | None]] = []
        self.called = threading.Event()

    def __call__(self, seconds: float, last_step: int | None) -> None:
        self.calls.append((seconds, last_step))
        self.called.set()


POLL = 0.01  # fake-clock tests poll fast; only the fake clock decides when a stall is due


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def stalls():
    return Stalls()


def test_no_beats_for_the_timeout_fires_once_with_the_last_step(stalls):
    with StallWatchdog(0.2, on_stall=stalls) as watchdog:
        watchdog.beat(7)
        assert stalls.called.wait(2.0)
        time.sleep(0.3)  # several more timeouts pass: still one call
    assert len(stalls.calls) == 1
    seconds, last_step = stalls.calls[0]
    assert last_step == 7
    assert 0.2 <= seconds < 1.5
    assert watchdog.fired


def test_regular_beats_never_fire(stalls):
    with StallWatchdog(0.2, on_stall=stalls) as watchdog:
        deadline = time.monotonic() + 0.5
        step = 0
        while time.monotonic() < deadline:
            step += 1
            watchdog.beat(step)
            time.sleep(0.02)
    assert stalls.calls == []
    assert not watchdog.fired


def test_the_stall_reports_the_seconds_since_the_last_beat(clock, stalls):
    with StallWatchdog(60, on_stall=stalls, clock=clock, poll_seconds=POLL) as watchdog:
        watchdog.beat(41)
        clock.advance(59.0)
        time.sleep(10 * POLL)
        assert stalls.calls == []  # one second short
        watchdog.beat(42)
        clock.advance(75.0)
        assert stalls.called.wait(2.0)
    assert stalls.calls == [(75.0, 42)]


def test_after_firing_it_never_fires_again(clock, stalls):
    with StallWatchdog(10, on_stall=stalls, clock=clock, poll_seconds=POLL) as watchdog:
        watchdog.beat(1)
        clock.advance(11)
        assert stalls.called.wait(2.0)
        watchdog.beat(2)  # training resumes ...
        clock.advance(100)  # ... and stalls again
        time.sleep(10 * POLL)
    assert stalls.calls == [(11, 1)]


def test_a_stall_before_any_beat_counts_from_start(clock, stalls):
    with StallWatchdog(10, on_stall=stalls, clock=clock, poll_seconds=POLL):
        clock.advance(12)
        assert stalls.called.wait(2.0)
    assert stalls.calls == [(12, None)]


def test_a_beat_before_start_is_kept(clock, stalls):
    watchdog = StallWatchdog(10, on_stall=stalls, clock=clock, poll_seconds=POLL)
    watchdog.beat(5)
    clock.advance(11)
    with watchdog:
        assert stalls.called.wait(2.0)
    assert stalls.calls == [(11, 5)]


def test_an_exception_in_on_stall_is_logged_not_raised(clock, caplog):
    called = threading.Event()

    def broken(seconds, last_step):
        called.set()
        raise ConnectionError("channel down")

    with caplog.at_level(logging.ERROR, logger="notify.delivery.watchdog"):
        with StallWatchdog(10, on_stall=broken, clock=clock, poll_seconds=POLL) as watchdog:
            watchdog.beat(3)
            clock.advance(20)
            assert called.wait(2.0)
            for _ in range(200):  # the log line follows the callback
                if caplog.records:
                    break
                time.sleep(POLL)
    assert watchdog.fired
    assert not watchdog.running
    [record] = caplog.records
    assert "stall callback failed" in record.getMessage()
    assert record.exc_info[0] is ConnectionError


def test_stop_is_immediate_and_idempotent(stalls):
    watchdog = StallWatchdog(on_stall=stalls)  # 15 minutes, polling every 5 s
    assert watchdog.timeout_seconds == 900 and watchdog.poll_seconds == 5
    watchdog.stop()  # before start: nothing to do
    watchdog.start()
    assert watchdog.running
    began = time.monotonic()
    watchdog.stop()
    assert time.monotonic() - began < 1.0
    assert not watchdog.running
    watchdog.stop()
    assert stalls.calls == []


def test_stop_from_inside_on_stall_does_not_deadlock(clock):
    holder: list[StallWatchdog] = []
    done = threading.Event()

    def stop_myself(seconds, last_step):
        holder[0].stop()
        done.set()

    watchdog = StallWatchdog(1, on_stall=stop_myself, clock=clock, poll_seconds=POLL)
    holder.append(watchdog)
    with watchdog:
        clock.advance(2)
        assert done.wait(2.0)


def test_a_watchdog_starts_once(stalls):
    watchdog = StallWatchdog(1, on_stall=stalls).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            watchdog.start()
    finally:
        watchdog.stop()


@pytest.mark.parametrize(("timeout", "poll"), [(900, 5.0), (60, 5.0), (8, 2.0), (0.2, 0.05)])
def test_the_poll_interval_defaults_to_a_quarter_of_the_timeout_at_most_5_seconds(timeout, poll, stalls):
    assert StallWatchdog(timeout, on_stall=stalls).poll_seconds == pytest.approx(poll)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": float("inf")}, "timeout_seconds"),
        ({"timeout_seconds": True}, "timeout_seconds"),
        ({"poll_seconds": -1}, "poll_seconds"),
        ({"on_stall": None}, "on_stall"),
        ({"clock": 3.0}, "clock"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field, stalls):
    with pytest.raises(ValueError, match=field):
        StallWatchdog(**{"on_stall": stalls, **kwargs})


def test_beat_is_cheap():
    watchdog = StallWatchdog(60, on_stall=lambda seconds, step: None)
    began = time.perf_counter()
    for step in range(100_000):
        watchdog.beat(step)
    assert (time.perf_counter() - began) / 100_000 < 20e-6  # well under a training step


def test_the_watchdog_and_the_watch_send_one_stall_warning(clock):
    # How a run wires them: the watchdog notices, the watch words and deduplicates the warning.
    watch = TrainingWatch()
    watch.observe(500, {"loss": 1.0}, total_steps=1000)
    sent = []
    sent_once = threading.Event()

    def on_stall(seconds, last_step):
        event = watch.record_stall(seconds, last_step)
        if event is not None:
            sent.append(event)
            sent_once.set()

    with StallWatchdog(900, on_stall=on_stall, clock=clock, poll_seconds=POLL) as watchdog:
        watchdog.beat(500)
        clock.advance(901)
        assert sent_once.wait(2.0)
    assert [event.details["kind"] for event in sent] == [STALL]
    assert sent[0].message.startswith("No training step for 15m 01s (last step 500).")
    assert "Step 500/1000 (50%)" in sent[0].message
    assert watch.record_stall(2000.0, 500) is None  # a second watchdog, after a resume, stays quiet
