"""The stall watchdog counts evaluation, checkpoints and the end of the run as progress, and a stall warning
names the phase the run was in.

Driven through the real Trainer callback (``NotificationCallback``) with transformers' own ``TrainerState``
and ``TrainerControl``, a real ``TrainingMonitor`` and a ``Notifier`` without channels (its Python callback
collects the events). The watchdog's timeout is a fraction of a second.
"""

from __future__ import annotations

import threading
import time

from transformers import TrainerControl, TrainerState

from notify.delivery import Channels, Notifier
from tracking.callbacks import NotificationCallback
from tracking.monitor import TrainingMonitor

STALL_SECONDS = 0.4


def make_callback() -> tuple[NotificationCallback, list, threading.Event]:
    notifier = Notifier(Channels())
    warnings, warned = [], threading.Event()

    def collect(event):
        if event.event_type.value == "warning":
            warnings.append(event)
            warned.set()

    notifier.add_callback(collect)
    callback = NotificationCallback(
        lambda total, start: TrainingMonitor(notifier, total, start_step=start, provisional_scores=False,
                                             stall_minutes=STALL_SECONDS / 60), "m", "d")
    callback.on_train_begin(None, TrainerState(max_steps=100), TrainerControl())
    return callback, warnings, warned


def keep_busy(seconds: float, beat) -> None:
    """Work that reports progress every 50 ms (an evaluation batch, say) for ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        beat()
        time.sleep(0.05)


def test_a_long_evaluation_with_prediction_steps_is_no_stall():
    callback, warnings, _ = make_callback()
    try:
        state = TrainerState(max_steps=100, global_step=10)
        callback.on_step_end(None, state, TrainerControl(should_evaluate=True))
        assert callback.monitor.phase == "evaluating"
        keep_busy(3 * STALL_SECONDS, lambda: callback.on_prediction_step(None, state, TrainerControl()))
        callback.on_evaluate(None, state, TrainerControl(should_save=True))
        assert callback.monitor.phase == "saving a checkpoint"
        callback.on_save(None, state, TrainerControl())
        assert callback.monitor.phase == "training"
        keep_busy(3 * STALL_SECONDS, lambda: callback.on_step_end(None, state, TrainerControl()))
    finally:
        callback.monitor.close()
    assert warnings == []


def stall_after(hook) -> str:
    """The one warning message a stall gives after ``hook(callback)``, when nothing else happens."""
    callback, warnings, warned = make_callback()
    try:
        hook(callback)
        assert warned.wait(10 * STALL_SECONDS)
    finally:
        callback.monitor.close()
    (warning,) = warnings
    return warning.message


def test_a_stall_names_the_phase_it_happened_in():
    state = TrainerState(max_steps=100, global_step=10)
    # a step, then the save hangs
    message = stall_after(lambda callback: callback.on_step_end(None, state, TrainerControl(should_save=True)))
    assert "No progress for" in message and "while saving a checkpoint after step 10" in message


def test_the_end_of_the_run_is_its_own_phase():
    state = TrainerState(max_steps=100, global_step=100)
    message = stall_after(lambda callback: callback.on_train_end(None, state, TrainerControl()))
    assert "while finishing the run" in message


def test_a_stalled_training_step_still_reads_as_one():
    state = TrainerState(max_steps=100, global_step=7)
    message = stall_after(lambda callback: callback.on_step_end(None, state, TrainerControl()))
    assert "No training step for" in message and "(last step 7)" in message
