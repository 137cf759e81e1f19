"""The training job: LoRA fine-tuning with transformers' Trainer, logged to MLflow, analyzed when it ends.

Order matters for the user: everything they can get wrong (settings, data, notification channels, the
model) is checked before the MLflow run is touched or a step is trained. Only the main process (rank 0
under torchrun/accelerate) talks to MLflow and sends notifications.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from .analyze import AnalysisError, analyze_run
from .callbacks import MlflowMetricsCallback, NotificationCallback
from .config import TrainConfig
from .data import TextData, load_text_data
from .early_stop import ADAPTER_STEP_TAG, STOPPED_TAG, StopOnCallback
from .evaluation import Evaluation, evaluate_outputs
from .heartbeat import RunGuard
from .mlflow_io import LoggedHistory, log_new_params, run_page_url, store_setup_lock
from .model import LoadedModel, load_lora_model
from .monitor import TrainingMonitor
from .run_logger import CANNOT_KEEP, LoggerReport, RunLogger
from .samples import load_sample_prompts, make_sampler
from .task_metrics import EvalLogits, forget_eval_logits

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class JobResult:
    run_id: str | None
    analysis: object | None  # scoring.QualityAnalysis on the main process
    total_steps: int
    unsent_path: Path | None = None  # points MLflow did not take, for `peft-studio upload`


class _TokenizedDataset:
    """A list of tokenized examples, which is all the Trainer's DataLoader needs."""

    def __init__(self, encodings: dict, labels: list[int] | None):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def _tokenize(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> _TokenizedDataset:
    return _TokenizedDataset(tokenizer(texts, truncation=True, max_length=max_length), labels)


def planned_steps(config: TrainConfig, train_examples: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = math.ceil(train_examples / (config.batch_size * world))
    return max(1, math.ceil(per_epoch * config.epochs))


def _ddp_backend() -> str | None:
    """Several processes without a GPU (e.g. `torchrun --nproc_per_node 2` on a CPU box) need gloo;
    on GPUs the default (nccl) is right."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return "gloo"
    return None


def build_trainer(config: TrainConfig, data: TextData, loaded: LoadedModel, callbacks: list):
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer, TrainingArguments

    classification = config.task == "classification"
    train = _tokenize(loaded.tokenizer, data.train_texts, data.train_labels, config.max_length)
    evaluate = (_tokenize(loaded.tokenizer, data.eval_texts, data.eval_labels, config.max_length)
                if data.eval_texts else None)
    steps = planned_steps(config, len(train))
    eval_steps = config.eval_steps or max(1, steps // 10)
    collator = (DataCollatorWithPadding(loaded.tokenizer) if classification
                else DataCollatorForLanguageModeling(loaded.tokenizer, mlm=False))
    args = TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size * 2,
        warmup_steps=config.warmup_ratio,  # below 1 it is a fraction of the run (transformers >= 5)
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # keep NaN/inf in the history: the analysis must see them
        eval_strategy="steps" if evaluate is not None else "no",
        eval_steps=eval_steps,
        save_strategy="no",
        report_to="none",  # our own callback logs to the run mlflow created; see MlflowMetricsCallback
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        ddp_backend=_ddp_backend(),
    )
    trainer = Trainer(
        model=loaded.model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluate,
        data_collator=collator,
        compute_metrics=EvalLogits() if classification and evaluate is not None else None,
        callbacks=callbacks,
    )
    if isinstance(trainer.compute_metrics, EvalLogits):
        trainer.compute_metrics.trainer = trainer
    if classification:
        # peft's wrapper passes **kwargs through, so the Trainer believes the model normalizes its loss by the
        # items of the whole multi-process batch and multiplies it by the process count; sequence
        # classification heads ignore that count, so under torchrun the loss would be world_size times too big.
        trainer.model_accepts_loss_kwargs = False
    return trainer


def _in_finalizer(frame) -> bool:
    """The signal arrived inside a weakref callback or a ``__del__`` (run by the garbage collector on any
    thread's behalf), where an exception is printed as "Exception ignored" and lost instead of stopping."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
            return True
        frame = frame.f_back
    return False


class TrainingStopped(KeyboardInterrupt):
    """SIGTERM, turned into the same path as Ctrl-C: the run is reported stopped and marked KILLED."""


@contextlib.contextmanager
def _sigterm_as_stop():
    """Let SIGTERM (what schedulers and `kill` send) end training like Ctrl-C, so it is reported."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if _in_finalizer(frame):  # Python would swallow the exception there: send the stop again in a moment
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        raise TrainingStopped("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(config: TrainConfig, notifier=None, channel_count: int = 0) -> JobResult:
    """Train, then analyze. ``notifier`` (a ``notify.Notifier``) is used only on the main process.
    Raises ``ConfigError`` before touching MLflow when a setting, the data or the model is wrong."""
    skip_final_gc_at_exit()
    data = load_text_data(config)
    prompts = load_sample_prompts(config, data.eval_texts)  # a bad sample_prompts file fails here, in a second
    loaded = load_lora_model(config, data.label_names)
    if not is_main_process():
        return _train_without_tracking(config, data, loaded)
    job = _open_run(config, notifier)
    with _sigterm_as_stop():
        try:
            _log_setup(job, data, loaded, channel_count)
            job.data = data
            job.sampler = make_sampler(config, prompts, loaded.tokenizer, job.client, job.run_id)
            job.stopper = StopOnCallback(config.stop_on, config.stop_patience) if config.stop_on.strip() else None
            job.trainer = build_trainer(config, data, loaded,
                                        callbacks=[MlflowMetricsCallback(job.logger), job.notifications,
                                                   *([job.stopper] if job.stopper else []),
                                                   *([job.sampler] if job.sampler else [])])
            started = time.monotonic()
            job.trainer.train()
            log.info("training finished in %.1f s", time.monotonic() - started)
            return _conclude(job)
        except BaseException as exc:
            _conclude_after_failure(job, exc)
            raise


@dataclass
class _Job:
    """What the phases of one tracked training job share: the run, its logger and its notifications."""

    config: TrainConfig
    client: MlflowClient
    run_id: str
    url: str
    notifier: object
    logger: JobRunLogger
    notifications: NotificationCallback
    fresh_run: bool  # the run held no point from an earlier attempt or another process
    make_monitor: object  # (total_steps, start_step) -> TrainingMonitor
    trainer: object = None
    stopper: StopOnCallback | None = None  # stop_on's callback, when set
    guard: RunGuard | None = None  # heartbeat and system metrics (tracking/heartbeat.py)
    data: TextData | None = None
    sampler: object = None  # tracking.samples.SamplingCallback for causal-lm runs with samples > 0

    def monitor(self, planned_steps: int) -> TrainingMonitor:
        """The run's monitor; one made now when training never got as far as making it."""
        return self.notifications.monitor or self.make_monitor(max(planned_steps, 1), 0)


def _train_without_tracking(config: TrainConfig, data: TextData, loaded: LoadedModel) -> JobResult:
    """A process other than the main one (rank > 0) trains its share and neither logs nor notifies."""
    stopper = [StopOnCallback(config.stop_on, config.stop_patience, keep_best=False)] if config.stop_on.strip() else []
    trainer = build_trainer(config, data, loaded, callbacks=stopper)  # stops at the same step as the main process
    trainer.train()
    return JobResult(None, None, trainer.state.global_step)


def _open_run(config: TrainConfig, notifier) -> _Job:
    """Start (or resume, under ``mlflow run``) the run, and set up its logger and notifications; a resumed
    run repeats none of the milestones and warnings an earlier attempt already sent."""
    if notifier is None:
        from notify.delivery import Channels, Notifier

        notifier = Notifier(Channels())  # no channels: events are still recorded in events.jsonl
    with store_setup_lock(mlflow.get_tracking_uri()):
        client = MlflowClient()
        client.search_experiments(max_results=1)  # creates or migrates the store's schema, under the lock
        active = mlflow.active_run() or mlflow.start_run()  # resumes MLFLOW_RUN_ID when `mlflow run` made the run
    run_id = active.info.run_id
    url = run_page_url(mlflow.get_tracking_uri(), active.info.experiment_id, run_id)
    existing = client.get_run(run_id).data
    sent_before, warned_before = _milestones_sent(existing.tags), _warnings_sent(existing.tags)
    if "://" in existing.params.get("notify", ""):
        log.warning("MLflow logged the notify URLs of `-P notify=...` as a run param; URLs with tokens or passwords "
                    "belong in the PEFT_STUDIO_NOTIFY variable or an apprise config file (-P notify=notify.yaml)")
    params = config.to_params()

    def make_monitor(total: int, start_step: int) -> TrainingMonitor:
        return TrainingMonitor(notifier, total, already_sent=sent_before, already_warned=warned_before,
                               start_step=start_step, params=params, stall_minutes=config.stall_minutes)

    notifications = NotificationCallback(make_monitor, config.model, config.data, url)
    logger = JobRunLogger(client, run_id,
                          unsent_path=Path(config.output_dir).resolve() / f"unsent-mlflow-{run_id}.jsonl",
                          on_trouble=lambda error: _warn_tracking_trouble(notifier, notifications, error))

    @notifier.add_callback
    def record_sent(event) -> None:  # with the run as they go: a resume after a hard kill repeats none
        if notifications.monitor is not None and event.event_type.value in ("progress", "warning"):
            _record_sent(logger, notifications.monitor)

    guard = RunGuard.start(client, run_id, config.heartbeat_seconds, config.system_metrics_seconds,
                           on_memory=lambda percent, detail: _warn_memory(notifications, percent, detail))
    return _Job(config, client, run_id, url, notifier, logger, notifications,
                fresh_run=not existing.metrics, make_monitor=make_monitor, guard=guard)


def _log_setup(job: _Job, data: TextData, loaded: LoadedModel, channel_count: int) -> None:
    """The run's parameters: the settings, and what the job found (data sizes, labels, parameter counts)."""
    config = job.config
    log_new_params(job.client, job.run_id, {
        **config.to_params(),
        "model_source": config.model if config.model.startswith("builtin:") else loaded.source,
        "train_examples": len(data.train_texts),
        "eval_examples": len(data.eval_texts),
        "num_labels": len(data.label_names) if data.label_names else "",
        "trainable_params": loaded.trainable_params,
        "total_params": loaded.total_params,
        "notify_channels": channel_count,
    })
    job.client.set_tag(job.run_id, "peft_studio.task", config.task)


def _conclude(job: _Job) -> JobResult:
    """Keep the adapter, analyze the run (from the history this process sent, when it is the whole
    history), send the completion message with the loss curve, and end the run FINISHED."""
    trainer, client, run_id = job.trainer, job.client, job.run_id
    stop_line = _stopped_early(job)  # restores the best-eval weights first, when stop_on stopped the run
    adapter = _save_adapter(trainer, job.config)
    monitor = job.monitor(trainer.state.max_steps)
    evaluation = _evaluate(job)  # task metrics, samples and judge: named in the report, logged after the analysis
    analysis, attachments = None, ()
    if _all_sent(job.logger):
        client.log_artifacts(run_id, str(adapter), "adapter")
        png = Path(job.config.output_dir) / "loss_curve.png"  # attached to the completion message too
        try:
            analysis = analyze_run(client, run_id, logged=own_history(job.logger, monitor, job.fresh_run),
                                   loss_curve_png=png, report_sections=[evaluation.report_section()])
            attachments = [str(png)] if analysis.curves is not None else ()
        except AnalysisError as exc:  # training worked; only the score is missing (e.g. 1 logged point)
            log.warning("%s", exc)
        evaluation.log(client, run_id)
    monitor.complete(analysis, job.url, attachments,
                     extra_lines=[*([stop_line] if stop_line else []), *evaluation.message_lines()])
    report = _finish(run_id, monitor, job.logger, "FINISHED", job.guard)
    return JobResult(run_id, analysis, trainer.state.global_step, report.unsent_path)


def _conclude_after_failure(job: _Job, exc: BaseException) -> None:
    """A crash or a stop: say so, analyze what was trained, and end the run FAILED or KILLED. A second stop
    while this runs ends the run at once."""
    stopped = isinstance(exc, KeyboardInterrupt)
    try:
        trainer = job.trainer
        monitor = job.monitor(trainer.state.max_steps if trainer is not None else 1)
        monitor.fail(exc, stopped=stopped)
        if job.sampler is not None:
            job.sampler.close()  # the samples logged so far stay with the run
        if _all_sent(job.logger):
            _partial_analysis(job.client, job.run_id)
        _finish(job.run_id, monitor, job.logger, "KILLED" if stopped else "FAILED", job.guard)
    except KeyboardInterrupt as again:  # Ctrl-C or SIGTERM again while cleaning up: stop now
        _end_at_once(job.run_id, job.logger)
        raise again from exc


# How long the end of a run waits for buffered points: the whole buffer while the store answers, and a
# while for a store that stopped answering (it may be restarting) before keeping them in a file;
# PEFT_STUDIO_STORE_PATIENCE (seconds) changes the latter.
FLUSH_TIMEOUT_SECONDS = 300.0
STORE_PATIENCE_SECONDS = 60.0


class JobRunLogger(RunLogger):
    """The job's ``RunLogger``, which also keeps every metric point it is given (``LoggedHistory``, about 24
    bytes a point), so the end of the run can score the history this process sent instead of reading it back
    from MLflow (bench/RESULTS.md B2)."""

    def __init__(self, *args, **kwargs):
        self.history = LoggedHistory()
        self._given = 0  # metric points and tags handed to the logger
        self._count_lock = threading.Lock()  # tags come from the notifier's thread too
        super().__init__(*args, **kwargs)

    def log_metrics(self, metrics, step: int, timestamp_ms: int | None = None) -> None:
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        values = {key: float(value) for key, value in metrics.items()}
        with self._count_lock:
            self.history.add(values, int(step), timestamp)
            self._given += len(values)
        super().log_metrics(values, step, timestamp)

    def set_tag(self, key: str, value) -> None:
        with self._count_lock:
            self._given += 1
        super().set_tag(key, value)

    def sent_everything(self) -> bool:
        """Everything given so far went into the run in ``log_batch`` calls that succeeded at once (a retried
        batch may have reached the store twice; a point kept in the unsent file may not have reached it)."""
        with self._count_lock:
            given = self._given
        return self.failures == 0 and self.unsent == 0 and self.lost == 0 and self.sent == given


def own_history(logger: RunLogger, monitor: TrainingMonitor | None, fresh_run: bool) -> LoggedHistory | None:
    """The points this process sent, when they are the run's whole history: the run had no metric when the
    job began (``fresh_run``; not a rerun of an earlier attempt), training started at step 0 (not resumed
    from a checkpoint), and every point went into the run at the first attempt. Otherwise None: the analysis
    reads the history back from MLflow, as ``peft-studio analyze`` does."""
    if not fresh_run or not isinstance(logger, JobRunLogger) or not logger.sent_everything():
        return None
    if monitor is not None and monitor.manager.start_step > 0:
        return None
    return logger.history


_FINAL_GC_SKIPPED = False


def skip_final_gc_at_exit() -> None:
    """Make the interpreter's exit after a training job about 1 s shorter (bench/RESULTS.md B2).

    With torch, transformers and MLflow loaded, most of the time between the end of ``main`` and the process
    exiting is not atexit handlers (they take milliseconds) but the garbage collector walking every object
    of those libraries again while the modules are torn down. ``gc.freeze()`` as the last atexit handler
    moves the objects that exist then out of the collector's reach. Everything else still happens: every
    atexit handler runs (registered when training begins, this one runs after those registered later, such
    as MLflow's end of the active run and the metrics logger's close), objects freed by reference count are
    freed, files are flushed and closed. What is skipped is collecting reference cycles that are still alive
    at exit, whose finalizers Python never promises to run anyway; the run's points, artifacts and status are
    written before (``_finish``), and a run still open at exit is ended by MLflow's handler as before."""
    global _FINAL_GC_SKIPPED
    if not _FINAL_GC_SKIPPED:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _FINAL_GC_SKIPPED = True


def _all_sent(logger: RunLogger) -> bool:
    """Everything logged so far is in the run (what the analysis needs); False when the store is away."""
    try:
        patience = float(os.environ.get("PEFT_STUDIO_STORE_PATIENCE", STORE_PATIENCE_SECONDS))
    except ValueError:
        log.warning("PEFT_STUDIO_STORE_PATIENCE must be a number of seconds, got %r; waiting %g s",
                    os.environ.get("PEFT_STUDIO_STORE_PATIENCE"), STORE_PATIENCE_SECONDS)
        patience = STORE_PATIENCE_SECONDS
    return logger.flush(timeout=FLUSH_TIMEOUT_SECONDS, patience=patience)


def _warn_tracking_trouble(notifier, notifications: NotificationCallback, error: str) -> None:
    """Once per outage: training goes on, points wait in memory and are retried."""
    from notify import warning_event

    monitor = notifications.monitor
    step, total = (monitor.step_reached, monitor.manager.total_steps) if monitor else (None, None)
    if error.startswith(CANNOT_KEEP):  # the unsent-points file cannot be written either
        notifier.send(warning_event("metrics at risk", f"The {error}. Training goes on.", step, total))
        return
    notifier.send(warning_event("MLflow unreachable", f"MLflow did not take the latest metrics ({error}). "
                                "Training goes on; the points are kept and sent again until MLflow answers.",
                                step, total))


MILESTONES_TAG = "peft_studio.milestones_sent"
WARNINGS_TAG = "peft_studio.warnings_sent"


def _milestones_sent(tags: dict[str, str]) -> tuple[int, ...]:
    """Milestones an earlier attempt of this run already sent, so a resumed run does not repeat them."""
    recorded = tags.get(MILESTONES_TAG, "")
    return tuple(int(m) for m in recorded.split(",") if m.strip().isdigit())


def _warnings_sent(tags: dict[str, str]) -> tuple[str, ...]:
    """Warning kinds (nonfinite, loss_spike, eval_rising, stall) an earlier attempt of this run already sent."""
    from notify.watch import WARNING_KINDS

    return tuple(k for k in (part.strip() for part in tags.get(WARNINGS_TAG, "").split(",")) if k in WARNING_KINDS)


def _record_sent(logger: RunLogger, monitor: TrainingMonitor) -> None:
    """The milestones and warning kinds sent so far (this attempt's and earlier ones'), as run tags."""
    from notify.watch import WARNING_KINDS

    logger.set_tag(MILESTONES_TAG, ",".join(str(m) for m in sorted(monitor.manager.sent_milestones)))
    logger.set_tag(WARNINGS_TAG, ",".join(sorted(k for k in monitor.watch.warned if k in WARNING_KINDS)))


def _stopped_early(job: _Job) -> str | None:
    """When stop_on ended training: put the best-eval weights back (they become the adapter), tag the run
    with why and from which step the adapter is, and return the completion message's line."""
    stopper = job.stopper
    if stopper is None or stopper.decision is None:
        return None
    adapter_step = stopper.restore_best(job.trainer.model)
    if adapter_step is not None:  # other weights than the last evaluation's
        forget_eval_logits(job.trainer)
    job.logger.set_tag(STOPPED_TAG, stopper.decision.tag)
    job.logger.set_tag(ADAPTER_STEP_TAG, adapter_step if adapter_step is not None else job.trainer.state.global_step)
    line = stopper.decision.sentence(stopper.stopped_step, adapter_step)
    log.warning("%s", line)
    return line[:1].upper() + line[1:] + "."


def _evaluate(job: _Job) -> Evaluation:
    """What the model does (docs/evaluation.md); never a reason for the run to fail."""
    if job.sampler is not None:
        job.sampler.close()  # the samples table is complete before the report names it
    try:
        return evaluate_outputs(job.config, job.trainer, job.data, job.sampler)
    except Exception as exc:
        log.warning("could not evaluate the model's outputs: %s", exc)
        return Evaluation(errors=[f"model outputs ({type(exc).__name__})"])


def _warn_memory(notifications: NotificationCallback, percent: float, detail: str) -> None:
    """Memory near its limit (from the system-metrics sampler): one warning, before the OOM killer acts."""
    monitor = notifications.monitor
    if monitor is not None:
        monitor.warn_memory(percent, detail)


def _save_adapter(trainer, config: TrainConfig) -> Path:
    """Keep the LoRA adapter (a few hundred KB) with the run, so the run is usable, not just scored; it is
    written locally first, so it survives a tracking store that is away."""
    target = Path(config.output_dir) / "adapter"
    trainer.save_model(str(target))
    return target


def _partial_analysis(client: MlflowClient, run_id: str) -> None:
    """A crashed run still gets an analysis of the history it had, when there is one."""
    try:
        analyze_run(client, run_id)
    except Exception as exc:  # never hide the original failure
        log.info("no partial analysis for run %s: %s", run_id, exc)


def _finish(run_id: str, monitor: TrainingMonitor, logger: RunLogger, status: str,
            guard: RunGuard | None = None) -> LoggerReport:
    """Send the last points and tags (bounded), keep the notification record with the run, close the run.
    When the store is away, the points go to a local file and the user is told how to upload them."""
    if guard is not None:
        guard.stop()  # no heartbeat once the run ends
    _record_sent(logger, monitor)
    report = logger.close(timeout=FLUSH_TIMEOUT_SECONDS if logger.healthy else 0.0, status=status)
    if report.unsent:
        from notify import unsent_metrics_event

        log.error("MLflow did not take %d point(s) of run %s; they are kept in %s: send them with "
                  "`peft-studio upload %s` when the tracking store is back", report.unsent, run_id,
                  report.unsent_path, report.unsent_path)
        monitor.send(unsent_metrics_event(report.unsent, str(report.unsent_path), report.last_error,
                                          monitor.step_reached, monitor.manager.total_steps))
    if report.lost:
        from notify import warning_event

        lost = (f"{report.lost} logged point(s) of run {run_id} were lost: MLflow did not take them and "
                f"{logger.unsent_path} could not be written")
        log.error("%s", lost)
        monitor.send(warning_event("metrics lost", lost + ".", monitor.step_reached, monitor.manager.total_steps))
    monitor.close()
    if report.unsent:
        _forget_active_run(status)
        return report
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.jsonl"
            monitor.notifier.write_jsonl(path)
            logger.client.log_artifact(run_id, str(path), "notifications")
    except Exception as exc:  # the run's status matters more than its notification record
        log.warning("could not record notifications for run %s: %s", run_id, exc)
    mlflow.end_run(status)
    return report


# How long a run stopped a second time (during the cleanup after a crash or a first stop) still sends its
# last points before keeping them in the unsent-points file.
SECOND_STOP_FLUSH_SECONDS = 10.0


def _end_at_once(run_id: str, logger: RunLogger) -> None:
    """A second stop: mark the run KILLED (not FINISHED, as MLflow's exit handler would) after a short flush
    whose leftovers go to the unsent-points file; further signals are ignored for those few seconds."""
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.warning("stopped again while cleaning up: run %s ends now as KILLED", run_id)
        report = logger.close(timeout=SECOND_STOP_FLUSH_SECONDS if logger.healthy else 0.0, status="KILLED")
        if not report.complete:
            log.error("MLflow did not take %d point(s) of run %s; they are kept in %s: send them with "
                      "`peft-studio upload %s`", report.unsent, run_id, report.unsent_path, report.unsent_path)
        _forget_active_run("KILLED")
    except Exception as exc:  # the status is what matters here; a store that is away gets it from upload
        log.warning("could not end run %s cleanly: %s", run_id, exc)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _forget_active_run(status: str) -> None:
    """End the fluent run without waiting on a store that is away (MLflow would retry for minutes); the
    status is in the unsent-points file, and ``peft-studio upload`` sets it."""
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        mlflow.end_run(status)
    except Exception as exc:
        log.debug("could not end the run on the store: %s", exc)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous
