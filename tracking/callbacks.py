"""Trainer callbacks: thin adapters from Trainer events to MLflow logging and to ``notify``'s pure logic.

They observe; they never own the loop or decide policy. On every process but the main one they do
nothing, so under ``torchrun`` metrics are logged and milestones sent exactly once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from notify import NotificationEvent, NotificationManager

log = logging.getLogger(__name__)


def numeric_logs(logs: dict) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowMetricsCallback(TrainerCallback):
    """Logs each Trainer log entry (loss, grad_norm, learning_rate, epoch, eval_*) in one batch request."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self.failures = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        timestamp = int(time.time() * 1000)
        metrics = [Metric(k, v, timestamp, state.global_step) for k, v in numeric_logs(logs).items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:  # a tracking hiccup must not kill a long fine-tune
            self.failures += 1
            log.warning("could not log %d metric(s) at step %d to MLflow: %s", len(metrics), state.global_step, exc)


class MilestoneCallback(TrainerCallback):
    """Turns step counts into milestone notifications; the 100% one waits for the quality score."""

    def __init__(self, send: Callable[[NotificationEvent], None]):
        self.send = send
        self.manager: NotificationManager | None = None
        self.latest: dict[str, float] = {}
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.max_steps > 0:
            self.manager = NotificationManager(state.max_steps, start_step=state.global_step)
            self.started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        for source, name in (("loss", "loss"), ("eval_loss", "eval_loss")):
            value = (logs or {}).get(source)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.latest[name] = float(value)

    def on_step_end(self, args, state, control, **kwargs):
        if self.manager is None:
            return
        events = self.manager.update(
            min(state.global_step, self.manager.total_steps),
            loss=self.latest.get("loss"),
            eval_loss=self.latest.get("eval_loss"),
            elapsed_seconds=time.monotonic() - self.started,
            hold_completion=True,
        )
        for event in events:
            self.send(event)
