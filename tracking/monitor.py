"""Everything that happens beside a training loop: start, milestones, warnings, stalls, completion, crash.

``TrainingMonitor`` ties ``notify``'s pure logic (milestones, warning detection) to delivery (a
``Notifier``) and to ``scoring`` (the provisional score in milestone messages). It is what our Trainer
callback uses, and it works the same from a plain PyTorch loop:

    monitor = TrainingMonitor(notifier, total_steps=1000)
    monitor.register_notification_callback(lambda event: print(event.title))
    monitor.start(model="my-model", data="my-data")
    for step in range(1, 1001):
        loss = train_step()
        monitor.log(step, {"loss": loss})
        monitor.step(step)
    monitor.complete()          # or monitor.fail(exc, step) in an except block
    monitor.close()

The training loop pays for a few appends and comparisons per call (about 0.15 ms per step, see
``bench/RESULTS.md``). The provisional score of a milestone (the full analysis of the points so far,
12-70 ms of pandas and scipy) is computed in a helper process: on a thread of the training process it held
Python's GIL and made the steps around each milestone 2-4x slower when steps take a few milliseconds
(bench/RESULTS.md B4). The helper is started with the monitor (niced; it imports this module and the scoring
code, not torch, MLflow or apprise), gets only the points logged since the previous milestone, and exits when
its pipe closes. Where it cannot run, the score is computed on the monitor's thread as before. Sending is
the notifier's (with ``send_from_helper=True``, a helper process of its own).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import pickle
import queue
import subprocess
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import pandas as pd

import notify.delivery.child as child
from notify import (
    NotificationEvent,
    NotificationManager,
    ProgressUpdate,
    error_event,
    milestone_event,
    start_event,
)
from notify.delivery.watchdog import StallWatchdog
from notify.watch import TrainingWatch
from scoring import LiveRules, analyze_history

log = logging.getLogger(__name__)

DEFAULT_STALL_MINUTES = 15.0


class TrainingMonitor:
    """Notifications for one training run. Only create it on the main process."""

    def __init__(
        self,
        notifier,
        total_steps: int,
        *,
        already_sent: Iterable[int] = (),
        already_warned: Iterable[str] = (),
        start_step: int = 0,
        stall_minutes: float = DEFAULT_STALL_MINUTES,
        provisional_scores: bool = True,
        params: Mapping[str, Any] | None = None,
    ):
        self.notifier = notifier
        self.manager = NotificationManager(total_steps, already_sent=tuple(already_sent), start_step=start_step)
        self.watch = TrainingWatch(rules=LiveRules(total_steps=total_steps), already_warned=tuple(already_warned))
        self.params = dict(params or {})
        self.provisional_scores = provisional_scores
        self._columns: dict[str, tuple[array, array]] = {}  # key -> (steps, values): what analyze_history reads
        self._points = 0
        self._helper = ScoreHelper() if provisional_scores else None
        self._pending: list[Future] = []  # milestone messages waiting for their provisional score
        self.latest: dict[str, float] = {}
        self.step_reached = start_step
        self._memory_warned = False
        self.phase = "training"  # what the run is doing: named by a stall warning
        self.started = time.monotonic()
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peft-studio-score")
        self._watchdog = (StallWatchdog(stall_minutes * 60, on_stall=self._on_stall) if stall_minutes > 0 else None)

    # -- the Python callback API -------------------------------------------------------------------------
    def register_notification_callback(self, fn: Callable[[NotificationEvent], Any]):
        """Call ``fn(event)`` for every event of this run (on the delivery thread)."""
        return self.notifier.add_callback(fn)

    # -- loop events -------------------------------------------------------------------------------------
    @property
    def history(self) -> list[tuple[str, int, float]]:
        """The logged points as (key, step, value), one metric after another (each in logging order)."""
        return [(key, step, value) for key, (steps, values) in list(self._columns.items())
                for step, value in zip(steps, values)]

    def start(self, model: str, data: str, run_url: str | None = None) -> None:
        self.started = time.monotonic()
        if self._helper is not None:  # warm by the first milestone; started off the training thread
            self._scorer.submit(self._helper.start)
        self._send(start_event(model, data, self.manager.total_steps, run_url=run_url))
        if self._watchdog is not None:
            self._watchdog.start()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """A log entry of the loop (loss, grad_norm, eval_loss, ...): kept for scores, checked for warnings."""
        # A step that is not a whole number is refused by the watch below; it is not kept for scores either.
        index = int(step) if isinstance(step, numbers.Integral) and not isinstance(step, bool) else None
        if index is not None and not -(2**63) <= index < 2**63:
            index = None
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if index is not None:
                    columns = self._columns.get(key)
                    if columns is None:
                        columns = self._columns[key] = (array("q"), array("d"))
                    columns[1].append(value)
                    columns[0].append(index)
                    self._points += 1
                if key in ("loss", "eval_loss") and math.isfinite(value):
                    self.latest[key] = float(value)
        for event in self.watch.observe(step, metrics, total_steps=self.manager.total_steps):
            self._send(event)

    def progress(self, phase: str = "training") -> None:
        """Progress other than a finished step (an eval batch, a saved checkpoint, the end-of-run work):
        beats the stall watchdog; ``phase`` is what a stall warning will say the run was doing."""
        self.phase = phase
        if self._watchdog is not None:
            self._watchdog.beat(self.step_reached)

    def step(self, step: int, next_phase: str = "training") -> None:
        """A finished optimizer step: beats the stall watchdog and emits crossed milestones (not 100%).
        ``next_phase`` is what comes before the next step (evaluating, saving a checkpoint)."""
        self.step_reached = step
        self.progress(next_phase)
        events = self.manager.update(
            min(step, self.manager.total_steps),
            loss=self.latest.get("loss"),
            eval_loss=self.latest.get("eval_loss"),
            elapsed_seconds=time.monotonic() - self.started,
            hold_completion=True,
        )
        for event in events:
            if self.provisional_scores and self._points > 1:
                # The points so far, as a length per metric: the lists only grow, so this is the snapshot.
                upto = {key: len(steps) for key, (steps, _) in self._columns.items()}
                self._pending = [f for f in self._pending if not f.done()]
                self._pending.append(self._scorer.submit(self._send_with_score, event, upto))
            else:
                self._send(event)

    def complete(self, analysis=None, run_url: str | None = None, attachments: Iterable[str] = (),
                 extra_lines: Iterable[str] = ()) -> None:
        """The completion message: final score, assessment, top three suggestions, run link (``extra_lines``,
        e.g. why stop_on stopped the run, go under the score). Sent after the milestone messages still waiting
        for their provisional score (a run shorter than the helper's start)."""
        wait(self._pending)
        event = self.manager.complete(
            analysis.quality_score if analysis else None,
            analysis.overall_assessment if analysis else None,
            tuple(extra_lines),
            suggestions=[s.change or s.message for s in analysis.suggestions[:3]] if analysis else (),
            run_url=run_url,
        )
        if event is not None:
            self._send(event, attachments)

    def fail(self, exc: BaseException, stopped: bool = False) -> None:
        """An error (or, with ``stopped``, Ctrl-C/SIGTERM) message; never raises, so the original
        exception is the one the user sees."""
        try:
            tail = "".join(traceback.format_exception(exc)[-3:])
            self._send(error_event(type(exc).__name__, str(exc), current_step=self.step_reached,
                                   total_steps=self.manager.total_steps, traceback_tail=tail, stopped=stopped))
        except Exception as send_failure:
            log.warning("could not send the error notification: %s", send_failure)

    def send(self, event: NotificationEvent) -> None:
        """Any other event of this run (e.g. the tracking store being away), through the same channels."""
        self._send(event)

    def warn_memory(self, percent: float, detail: str) -> None:
        """Memory near its limit (the system-metrics sampler's thread): one warning per run."""
        if self._memory_warned:
            return
        self._memory_warned = True
        from notify import warning_event

        self._send(warning_event("memory", f"Memory is at {percent:.0f}% of its limit ({detail}); the system may "
                                 "kill the run soon. Lower batch_size or max_length, or free memory.",
                                 self.step_reached, self.manager.total_steps))

    def close(self) -> None:
        """Stop the watchdog, let pending scores go out, then flush the notifier (bounded)."""
        if self._watchdog is not None:
            self._watchdog.stop()
        self._scorer.shutdown(wait=True)
        if self._helper is not None:
            self._helper.close()
        self.notifier.close()

    # -- internals ---------------------------------------------------------------------------------------
    def _send(self, event: NotificationEvent, attachments: Iterable[str] = ()) -> None:
        self.notifier.send(event, tuple(attachments))

    def provisional_score(self, upto: Mapping[str, int]) -> float | None:
        """The quality score of the first ``upto[key]`` points of each metric: ``analyze_history``'s, computed
        by the helper process, or here when there is none; None when the points cannot be scored yet."""
        if self._helper is not None:
            answered, score = self._helper.score(self._columns, upto, self.params)
            if answered:
                return score
        try:
            return analyze_history(history_frame(self._columns, upto), params=self.params).quality_score
        except Exception as exc:  # too little history yet, or odd values: send without a score
            log.debug("no provisional score: %s", exc)
            return None

    def _send_with_score(self, event: NotificationEvent, upto: Mapping[str, int]) -> None:
        score = self.provisional_score(upto)
        if score is not None:
            details = event.details
            event = milestone_event(event.milestone, ProgressUpdate(
                current_step=event.current_step, total_steps=event.total_steps,
                previous_step=max(0, event.current_step - 1),
                loss=details.get("loss"), eval_loss=details.get("eval_loss"),
                elapsed_seconds=details.get("elapsed_seconds"), quality_score=score,
                start_step=min(self.manager.start_step, event.current_step)))
        self._send(event)

    def _on_stall(self, seconds: float, step: int | None) -> None:
        event = self.watch.record_stall(seconds, step, total_steps=self.manager.total_steps, phase=self.phase)
        if event is not None:
            self._send(event)


def history_frame(columns: Mapping[str, tuple[array, array]], upto: Mapping[str, int]) -> pd.DataFrame:
    """The first ``upto[key]`` points of each metric as the (key, step, value) frame ``analyze_history`` reads.
    Each metric's points keep their logging order (the order analyze_history reads them in: for a repeated
    step the last one wins); the order between metrics does not matter to it."""
    import numpy as np

    keys, steps, values = [], [], []
    for key, n in upto.items():  # not columns.items(): the training thread may add a metric meanwhile
        key_steps, key_values = columns[key]
        n = min(n, len(key_steps))
        if n <= 0:
            continue
        keys.append(np.full(n, key, dtype=object))
        # Slices are copies: a numpy view of the growing arrays would stop the training loop's appends.
        steps.append(np.frombuffer(key_steps[:n], dtype=np.int64))
        values.append(np.frombuffer(key_values[:n], dtype=np.float64))
    if not keys:
        return pd.DataFrame(columns=["key", "step", "value"])
    return pd.DataFrame({"key": np.concatenate(keys), "step": np.concatenate(steps),
                         "value": np.concatenate(values)})



class ScoreHelper:
    """A helper process that computes provisional scores, so that the training process does not spend 12-70 ms
    of GIL-holding pandas per milestone (bench/RESULTS.md B4). It keeps the points it was sent: each request
    carries only the points logged since the previous one (raw bytes of the monitor's arrays), and the
    answer is ``analyze_history(...).quality_score`` of all of them. Requests come one at a time, from the
    monitor's scorer thread. When the helper cannot start, dies or does not answer within
    ``ANSWER_TIMEOUT`` seconds, ``score`` says so (the monitor then scores on its own thread) and the helper is
    not used again."""

    ANSWER_TIMEOUT = 60.0  # the first answer waits for the helper's imports (1-3 s; more on a loaded machine)

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._sent: dict[str, int] = {}  # points of each metric the helper has
        self._unusable = False
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the process unless it runs already; False when there is none to use."""
        with self._lock:
            if self._process is not None or self._unusable:
                return self._process is not None
            try:
                self._process = child.start("tracking.monitor", "serve_scores")
            except Exception as exc:
                log.debug("no helper process for provisional scores (%s); they are computed here", exc)
                self._unusable = True
                return False
            threading.Thread(target=self._read_replies, args=(self._process,), daemon=True,
                             name="peft-studio-score-reader").start()
            return True

    def _read_replies(self, process: subprocess.Popen) -> None:
        try:
            while True:
                self._replies.put(pickle.load(process.stdout))
        except Exception:  # EOF (the helper exited) or a broken reply
            self._replies.put(None)

    def score(self, columns: Mapping[str, tuple[array, array]], upto: Mapping[str, int],
              params: Mapping[str, Any]) -> tuple[bool, float | None]:
        """(answered, score) for the first ``upto[key]`` points of each of ``columns``' metrics; the score is
        None when the helper could not score them (too little history yet)."""
        if not self.start():
            return False, None
        delta = {}
        for key, n in upto.items():
            have = self._sent.get(key, 0)
            if n > have:
                steps, values = columns[key]
                delta[key] = (steps[have:n].tobytes(), values[have:n].tobytes())
        try:
            pickle.dump((delta, dict(params)), self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
            reply = self._replies.get(timeout=self.ANSWER_TIMEOUT)
        except Exception as exc:  # the helper died, or the params cannot be pickled
            log.debug("the provisional-score helper failed: %s", exc)
            reply = None
        if reply is None:
            log.debug("the provisional-score helper did not answer; scores are computed here from now on")
            self.close()
            return False, None
        self._sent.update({key: upto[key] for key in delta})
        score, error = reply
        if error:
            log.debug("no provisional score: %s", error)
        return True, score

    def close(self) -> None:
        """Close its pipe (it exits at once) and reap it; it is not used again."""
        with self._lock:
            process, self._process = self._process, None
            self._unusable = True
        if process is not None:
            child.stop(process, wait=5, kill=True)


def serve_scores() -> None:
    """The helper process: read (new points, params) requests from stdin, answer (score, error) on stdout,
    exit when stdin closes (the monitor closed it, or the training process ended in any way)."""
    from scoring import analyze_history as analyze

    requests, answers = child.serve_pipes()
    columns: dict[str, tuple[array, array]] = {}
    while True:
        try:
            delta, params = pickle.load(requests)
        except Exception:  # EOF: the monitor is done
            break
        for key, (steps, values) in delta.items():
            key_columns = columns.setdefault(key, (array("q"), array("d")))
            key_columns[0].frombytes(steps)
            key_columns[1].frombytes(values)
        try:
            frame = history_frame(columns, {key: len(steps) for key, (steps, _) in columns.items()})
            reply = (analyze(frame, params=params).quality_score, None)
        except Exception as exc:  # too little history yet, or odd values
            reply = (None, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
    answers.flush()
    os._exit(0)  # nothing to clean up: skip the interpreter's teardown
