"""Trainer callbacks: thin adapters from Trainer events to MLflow logging and to ``notify``'s pure logic.

They observe; they never own the loop or decide policy. On every process but the main one they do
nothing, so under ``torchrun`` metrics are logged and milestones sent exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from .monitor import TrainingMonitor
from .run_logger import RunLogger

log = logging.getLogger(__name__)


def numeric_logs(logs: dict) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowMetricsCallback(TrainerCallback):
    """Hands each Trainer log entry (loss, grad_norm, learning_rate, epoch, eval_*) to a ``RunLogger``:
    the training loop pays for an append; a background thread sends batches."""

    def __init__(self, logger: RunLogger):
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.logger.log_metrics(numeric_logs(logs), state.global_step)


class NotificationCallback(TrainerCallback):
    """Feeds Trainer events to a ``TrainingMonitor`` (milestones, warnings, stall watchdog); main process only.

    The monitor is made at ``on_train_begin``, when the Trainer knows the real number of steps (which
    depends on the number of processes) and the step a resumed run starts from.
    """

    def __init__(self, make_monitor: Callable[[int, int], TrainingMonitor], model: str, data: str,
                 run_url: str | None = None):
        self.make_monitor = make_monitor
        self.start_info = {"model": model, "data": data, "run_url": run_url}
        self.monitor: TrainingMonitor | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.monitor is None:
            self.monitor = self.make_monitor(max(state.max_steps, 1), state.global_step)
            self.monitor.start(**self.start_info)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs:
            self.monitor.log(state.global_step, logs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None:  # the Trainer has already decided whether it evaluates or saves next
            self.monitor.step(state.global_step, _next_phase(control))

    # Evaluation, prediction and checkpoints are progress too: a long one is not a stall.
    def on_prediction_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.progress("evaluating")

    def on_evaluate(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.progress("saving a checkpoint" if control.should_save else "training")

    def on_save(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.progress("training")

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.progress("finishing the run (saving the adapter, sending the last points, analyzing)")


def _next_phase(control) -> str:
    if control.should_evaluate:
        return "evaluating"
    if control.should_save:
        return "saving a checkpoint"
    return "training"


class PeftStudioCallback(NotificationCallback):
    """For your own ``Trainer``: milestones, warnings and, when training ends, the quality analysis of
    the MLflow run (``report_to="mlflow"``) and the completion message with its score.

        callback = PeftStudioCallback(notify="json://127.0.0.1:8000/hook")
        trainer = Trainer(..., args=TrainingArguments(..., report_to="mlflow"), callbacks=[callback])
        try:
            trainer.train()
        except BaseException as exc:
            callback.fail(exc)   # the Trainer has no crash hook: report it, then let it propagate
            raise

    ``notify`` takes what ``--notify`` takes (URLs or an apprise config file; empty: PEFT_STUDIO_NOTIFY).
    Invalid channels raise ``ChannelError`` here, before training starts. ``stop_on`` (e.g. ``"nan,overfitting"``)
    and ``stop_patience`` are the job's (docs/guard.md): training stops at the next step, the model gets the
    best-eval weights back at the end (save it after ``train()``) and the completion message says so.
    """

    def __init__(self, notify: str | None = None, analyze: bool = True, stall_minutes: float = 15.0,
                 model: str = "your model", data: str = "your data", stop_on: str = "", stop_patience: int = 3):
        from notify.delivery import Notifier, load_channels

        from .early_stop import StopOnCallback

        self.stopper = StopOnCallback(stop_on, stop_patience) if stop_on.strip() else None  # bad words: ValueError
        self.notifier = Notifier(load_channels(notify), send_from_helper=True)  # sends never take the GIL here
        self.analyze = analyze
        self.run_id: str | None = None
        super().__init__(lambda total, start: TrainingMonitor(self.notifier, total, start_step=start,
                                                               stall_minutes=stall_minutes), model, data)

    def register_notification_callback(self, fn):
        return self.notifier.add_callback(fn)

    def on_train_begin(self, args, state, control, **kwargs):
        import mlflow

        if state.is_world_process_zero and mlflow.active_run() is not None:
            self.run_id = mlflow.active_run().info.run_id
        if self.stopper is not None:
            self.stopper.on_train_begin(args, state, control, **kwargs)
        super().on_train_begin(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if self.stopper is not None:
            self.stopper.on_log(args, state, control, logs=logs, **kwargs)

    def on_evaluate(self, args, state, control, **kwargs):
        super().on_evaluate(args, state, control, **kwargs)
        if self.stopper is not None:
            self.stopper.on_evaluate(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        super().on_train_end(args, state, control, **kwargs)
        analysis = None
        if self.analyze and self.run_id:
            import mlflow

            from .analyze import analyze_run

            try:
                mlflow.flush_async_logging()  # MLflowCallback logs asynchronously
                analysis = analyze_run(MlflowClient(), self.run_id)
            except Exception as exc:  # the completion message still goes out, without a score
                log.warning("could not analyze run %s: %s", self.run_id, exc)
        self.monitor.complete(analysis, extra_lines=self._stopped_early(state, kwargs.get("model")))
        self.monitor.close()

    def _stopped_early(self, state, model) -> list[str]:
        """After a stop_on stop: the best-eval weights back into ``model``, the run's tags, the message's line."""
        stopper = self.stopper
        if stopper is None or stopper.decision is None or model is None:
            return []
        from .early_stop import ADAPTER_STEP_TAG, STOPPED_TAG

        adapter_step = stopper.restore_best(model)
        if self.run_id:
            try:
                client = MlflowClient()
                client.set_tag(self.run_id, STOPPED_TAG, stopper.decision.tag)
                client.set_tag(self.run_id, ADAPTER_STEP_TAG, adapter_step if adapter_step is not None
                               else state.global_step)
            except Exception as exc:
                log.warning("could not tag run %s as stopped early: %s", self.run_id, exc)
        line = stopper.decision.sentence(stopper.stopped_step, adapter_step)
        return [line[:1].upper() + line[1:] + "."]

    def fail(self, exc: BaseException) -> None:
        """Report a crash (or, for KeyboardInterrupt, a stop) of ``trainer.train()``."""
        if self.monitor is not None:
            self.monitor.fail(exc, stopped=isinstance(exc, KeyboardInterrupt))
            self.monitor.close()
