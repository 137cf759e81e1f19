"""The provisional score of a milestone message is computed in a helper process (bench/RESULTS.md B4), and it
is the score the full analysis gives the same points: ``analyze_history`` of everything logged up to the
milestone."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest

import tracking.monitor
from notify.delivery import Notifier, load_channels
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


def test_a_helper_that_dies_is_replaced_by_scoring_here(monkeypatch):
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=200, params=PARAMS)
    original = monitor._send_with_score

    def kill_helper_first(event, upto):
        if event.current_step == 100 and monitor._helper._process is not None:
            monitor._helper._process.kill()
            monitor._helper._process.wait()
        return original(event, upto)

    monitor._send_with_score = kill_helper_first
    expected = _train(monitor)
    monitor.close()
    assert _scores(notifier) == expected


def test_the_completion_message_comes_after_the_milestones_waiting_for_their_score():
    notifier = _notifier()
    monitor = TrainingMonitor(notifier, total_steps=40, params=PARAMS)
    _train(monitor, steps=40)  # far shorter than the helper takes to start
    monitor.close()
    titles = [r["event"]["title"] for r in notifier.records]
    assert titles[-1].startswith("Training Complete")
    assert sum(r["event"]["event_type"] == "progress" for r in notifier.records) == 3


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
