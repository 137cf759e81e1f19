"""The provisional score of a milestone message is computed in a helper process (bench/RESULTS.md B4), and it
is the score the full analysis gives the same points: ``analyze_history`` of everything logged up to the
milestone."""

from __future__ import annotations

import concurrent.futures
import math
import os
import signal
import sys
import time

import pandas as pd
import pytest
from receivers import HTTPReceiver

import tracking.monitor
from notify.delivery import Notifier, load_channels
from notify.formatting import format_score
from scoring import analyze_history
from tracking.monitor import ScoreHelper, TrainingMonitor, history_frame

PARAMS = {"learning_rate": "0.001", "max_grad_norm": "1.0"}


def _entry(step: int) -> dict[str, float]:
    loss = 0.4 + 2.0 * math.exp(-step / 60) + 0.02 * math.sin(step / 3)
    entry = {"loss": loss, "grad_norm": 0.8 + 0.3 * math.exp(-step / 90), "learning_rate": 1e-3, "epoch": step / 100}
    if step % 20 == 0:
        entry["eval_loss"] = loss + 0.05 + step / 4000
    if step == 130:
        entry["loss"] = math.nan
    return entry


def _train(monitor: TrainingMonitor, steps: int = 200) -> dict[int, float]:
    """A loop logging like a Trainer (a repeated step too); the expected score at each milestone step."""
    logged: list[tuple[str, int, float]] = []
    expected = {}
    milestones = {math.ceil(steps * p / 100) for p in (25, 50, 75)}
    monitor.start(model="m", data="d")
    for step in range(1, steps + 1):
        entry = _entry(step)
        monitor.log(step, entry)
        logged += [(k, step, float(v)) for k, v in entry.items()]
        if step == 90:  # the same step logged again: the later value wins, as in MLflow
            monitor.log(step, {"loss": 0.9})
            logged.append(("loss", step, 0.9))
        if step in milestones:  # the full analysis of the same points, in logging order
            expected[step] = analyze_history(pd.DataFrame(logged, columns=["key", "step", "value"]),
                                             params=PARAMS).quality_score
        monitor.step(step)
    monitor.complete()
    return expected


def _scores(notifier: Notifier) -> dict[int, float]:
    return {r["event"]["current_step"]: r["event"]["details"].get("quality_score") for r in notifier.records
            if r["event"]["event_type"] == "progress"}


def _notifier() -> Notifier:
    return Notifier(load_channels("", env={}))


def test_milestone_scores_come_from_the_helper_and_equal_the_full_analysis(monkeypatch):
    def not_here(*args, **kwargs):
        raise AssertionError("the provisional score was computed in the training process")

    monkeypatch.setattr(tracking.monitor, "analyze_history", not_here)
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    expected = _train(monitor)
    process = monitor._helper._process
    monitor.close()
    assert _scores(notifier) == expected
    assert all(score is not None for score in expected.values())
    assert process is not None and process.poll() is not None  # the helper has exited


def test_without_a_helper_the_score_is_computed_here_and_is_the_same(monkeypatch):
    monkeypatch.setattr(sys, "executable", "")  # no Python to start a helper with
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    expected = _train(monitor)
    monitor.close()
    assert _scores(notifier) == expected


def _at_step(monitor: TrainingMonitor, step: int, before=None, after=None) -> None:
    """Runs ``before()`` and ``after()`` around ``monitor.step(step)`` (where the 50% milestone asks for its score)."""
    original = monitor.step

    def step_hook(n, *args, **kwargs):
        if n == step and before:
            before()
        result = original(n, *args, **kwargs)
        if n == step and after:
            after()
        return result

    monitor.step = step_hook


def _wait_for_helper(monitor: TrainingMonitor) -> None:
    """Starts the helper now (``monitor.start`` does it on the scorer thread) and lets it load."""
    assert monitor._helper.start()
    assert monitor._helper.score({}, {}, {}) == (True, None)  # answered once its imports are done


def test_a_helper_that_dies_is_replaced_by_scoring_here():
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)

    def kill():
        monitor._helper._process.kill()
        monitor._helper._process.wait()

    _at_step(monitor, 100, before=kill)
    expected = _train(monitor)
    monitor.close()
    assert _scores(notifier) == expected


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_helper_that_dies_while_a_score_is_asked_is_replaced_by_scoring_here():
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    _wait_for_helper(monitor)
    helper = monitor._helper._process
    _at_step(monitor, 100, before=lambda: os.kill(helper.pid, signal.SIGSTOP),  # it cannot answer first
             after=lambda: os.kill(helper.pid, signal.SIGKILL))
    expected = _train(monitor)
    monitor.close()
    assert _scores(notifier) == expected


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_helper_that_stops_answering_is_given_up_after_its_timeout(monkeypatch):
    monkeypatch.setattr(ScoreHelper, "IDLE_CHECK", 0.2)  # the reader looks for a due request this often
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    _wait_for_helper(monitor)
    monkeypatch.setattr(ScoreHelper, "ANSWER_TIMEOUT", 1.0)  # once loaded (its imports take longer)
    helper = monitor._helper._process
    os.kill(helper.pid, signal.SIGSTOP)
    started = time.monotonic()
    expected = _train(monitor)  # complete() waits for the milestones: scored here once the helper is given up
    assert time.monotonic() - started < 20
    monitor.close()
    assert _scores(notifier) == expected
    assert helper.wait(timeout=10) != 0  # killed


def test_milestones_asked_while_the_helper_runs_use_no_thread_of_the_monitor(monkeypatch):
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    _wait_for_helper(monitor)
    monkeypatch.setattr(monitor, "_send_with_score", lambda *args: pytest.fail("went through the scorer thread"))
    original = monitor.step

    def step(n, *args, **kwargs):  # each milestone's message is out before the next (else it must wait its turn)
        concurrent.futures.wait(monitor._pending)
        return original(n, *args, **kwargs)

    monitor.step = step
    expected = _train(monitor)
    monitor.close()
    assert _scores(notifier) == expected and all(score is not None for score in expected.values())


def test_a_request_larger_than_the_pipe_is_written_in_the_background():
    from array import array

    helper = ScoreHelper()
    try:
        assert helper.start()
        n = 200_000  # 3.2 MB of points: far more than a pipe holds
        columns = {"loss": (array("q", range(1, n + 1)), array("d", (2.0 - i / n for i in range(n))))}
        answered, score = helper.score(columns, {"loss": n}, {})
        assert answered and score == analyze_history(
            pd.DataFrame({"key": "loss", "step": list(columns["loss"][0]), "value": list(columns["loss"][1])})
        ).quality_score
    finally:
        helper.close()


def test_the_completion_message_comes_after_the_milestones_waiting_for_their_score():
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=40, params=PARAMS)
    _train(monitor, steps=40)  # far shorter than the helper takes to start
    monitor.close()
    titles = [r["event"]["title"] for r in notifier.records]
    assert titles[-1].startswith("Training Complete")
    milestones = [r["event"]["milestone"] for r in notifier.records if r["event"]["event_type"] == "progress"]
    assert milestones == [25, 50, 75]  # in order, though they asked for their scores in quick succession


def test_history_keeps_every_point_in_logging_order_per_metric():
    monitor = TrainingMonitor(_notifier(), total_steps=10, provisional_scores=False)
    monitor.log(1, {"loss": 2.0, "grad_norm": 1, "flag": True, "note": "text"})
    monitor.log(2, {"loss": 1.5})
    with pytest.raises(ValueError):
        monitor.log(None, {"loss": 1.0})  # not a step: refused, and not kept
    assert monitor.history == [("loss", 1, 2.0), ("loss", 2, 1.5), ("grad_norm", 1, 1.0)]
    frame = history_frame(monitor._columns, {"loss": 1, "grad_norm": 1})
    assert frame.to_dict("records") == [{"key": "loss", "step": 1, "value": 2.0},
                                        {"key": "grad_norm", "step": 1, "value": 1.0}]
    monitor.close()


def test_the_helper_answers_none_for_too_little_history():
    from array import array

    helper = ScoreHelper()
    try:
        columns = {"loss": (array("q", [1]), array("d", [2.0]))}
        assert helper.score(columns, {"loss": 1}, {}) == (True, None)  # one point: no curve yet
        columns["loss"][0].extend([2, 3])
        columns["loss"][1].extend([1.5, 1.2])
        answered, score = helper.score(columns, {"loss": 3}, {})  # only the two new points are sent
        assert helper._sent == {"loss": 3}
        assert answered and score == analyze_history(
            pd.DataFrame({"key": "loss", "step": [1, 2, 3], "value": [2.0, 1.5, 1.2]})).quality_score
    finally:
        helper.close()


@pytest.mark.parametrize("steps", [0, 1])
def test_no_score_for_too_few_points(steps):
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=4, params=PARAMS)
    for step in range(1, 5):
        if step <= steps:
            monitor.log(step, {"loss": 1.0})
        monitor.step(step)
    monitor.complete()
    monitor.close()
    assert all(score is None for score in _scores(notifier).values())


# --- with a send helper (what the job runs): it scores each milestone message itself and sends it ----------


def _webhook_notifier(webhook: HTTPReceiver) -> Notifier:
    return Notifier(load_channels(webhook.url()), send_from_helper=True)


def test_with_a_send_helper_milestones_are_scored_and_sent_by_it(monkeypatch):
    monkeypatch.setattr(tracking.monitor, "analyze_history", _scored_here)
    with HTTPReceiver() as webhook:
        notifier = _webhook_notifier(webhook)
        monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
        monkeypatch.setattr(monitor, "_score_and_send", lambda *args: pytest.fail("scored outside the send helper"))
        expected = _train(monitor)
        monitor.close()
        bodies = [request["json"] for request in webhook.wait_for(6)]  # start, 3 milestones, a warning, the end
    assert monitor._helper._process is None  # no score helper was started: the send helper scored them
    assert _scores(notifier) == expected and all(score is not None for score in expected.values())
    assert [body["title"] for body in bodies] == [r["event"]["title"] for r in notifier.records]
    milestones = [body for body, r in zip(bodies, notifier.records) if r["event"]["event_type"] == "progress"]
    for body, score in zip(milestones, expected.values(), strict=True):  # what was sent is what is recorded
        assert f"Provisional quality score: {format_score(score)}/100" in body["message"], body["message"]


def test_the_send_helper_keeps_milestones_before_the_completion_message():
    with HTTPReceiver() as webhook:
        notifier = _webhook_notifier(webhook)
        monitor = TrainingMonitor(notifier, total_steps=40, params=PARAMS)
        _train(monitor, steps=40)  # far shorter than the helper takes to load the scoring code
        monitor.close()
        titles = [request["json"]["title"] for request in webhook.wait_for(5)]
    assert titles[-1].startswith("Training Complete") and len(titles) == 5, titles
    assert [r["event"]["milestone"] for r in notifier.records if r["event"]["event_type"] == "progress"] == [25, 50, 75]
    assert all(score is not None for score in _scores(notifier).values())


def test_a_send_helper_lost_mid_run_leaves_the_next_milestones_to_the_score_helper():
    with HTTPReceiver() as webhook:
        notifier = _webhook_notifier(webhook)
        monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)

        def kill_the_send_helper():  # once the 25% message is out (start, then 25%)
            assert len(webhook.wait_for(2, timeout=30)) == 2
            notifier._helper._process.kill()
            notifier._helper._process.wait()

        _at_step(monitor, 100, before=kill_the_send_helper)
        expected = _train(monitor)
        assert monitor._helper.running  # the score helper took over
        monitor.close()
        sent = [request["json"]["message"] for request in webhook.wait_for(6)]
    assert _scores(notifier) == expected and all(score is not None for score in expected.values())
    for score in expected.values():  # each milestone went out with its score, from one process or the other
        assert any(f"Provisional quality score: {format_score(score)}/100" in message for message in sent), sent


def test_more_new_points_than_the_send_helper_takes_go_to_the_score_helper(monkeypatch):
    with HTTPReceiver() as webhook:
        notifier = _webhook_notifier(webhook)
        monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
        _at_step(monitor, 100, before=lambda: monkeypatch.setattr(tracking.monitor, "SEND_HELPER_MAX_BYTES", 16))
        expected = _train(monitor)  # 25% goes to the send helper, 50% and 75% (more than one point) do not
        assert monitor._helper.running and monitor._in_send_helper  # both were used
        monitor.close()
    assert _scores(notifier) == expected and all(score is not None for score in expected.values())
    assert notifier._helper is None or not notifier._helper._lost  # the send helper was never overrun


def test_callbacks_get_scored_milestones_when_a_send_helper_runs():
    seen = []
    with HTTPReceiver() as webhook:
        notifier = _webhook_notifier(webhook)
        monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
        monitor.register_notification_callback(seen.append)  # they run here: the score is computed for them
        expected = _train(monitor)
        monitor.close()
    scores = {e.current_step: e.details.get("quality_score") for e in seen if e.event_type.value == "progress"}
    assert scores == expected == _scores(notifier)


def _scored_here(*args, **kwargs):
    raise AssertionError("the provisional score was computed in the training process")
