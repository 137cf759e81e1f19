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
(bench/RESULTS.md B4). Which helper:

* the notifier's send helper (``send_from_helper=True``, channels, no callbacks: what the job runs). The
  training thread hands it the unscored message with the points logged since the previous milestone
  (``Notifier.send_finished``); the helper scores it (``finish_milestone``) and sends it. Nothing else of the
  training process takes part.
* otherwise ``ScoreHelper``, a process of its own started with the monitor (niced; it imports this module and
  the scoring code, not torch, MLflow or apprise), also fed only the new points. The training thread writes
  each request itself, without waiting, and the thread that reads the answer sends the milestone message: one
  wake-up per milestone. Where it cannot run, the score is computed on the monitor's thread as before.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import pickle
import select
import struct
import subprocess
import threading
import time
import traceback
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
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

OnScore = Callable[[bool, "float | None"], Any]  # (answered, score): a provisional score coming back
_LENGTH = struct.Struct("<Q")  # the length of each reply from the score helper, before its pickle

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
        self._in_send_helper: dict[str, int] = {}  # points of each metric the send helper's finisher has
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
            if self.notifier.finishes_in_helper:  # the send helper scores the milestones (see step)
                self.notifier.prepare_finisher(FINISHER)
            else:
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
                if not self._pending and self._finish_in_send_helper(event, upto):
                    continue
                self._pending.append(self._score_and_send(event, upto))
            else:
                self._send(event)

    def complete(self, analysis=None, run_url: str | None = None, attachments: Iterable[str] = (),
                 extra_lines: Iterable[str] = ()) -> None:
        """The completion message: final score, assessment, top three suggestions, run link (``extra_lines``,
        e.g. why stop_on stopped the run, go under the score). Sent after the milestone messages still waiting
        for their provisional score (a run shorter than the helper's start)."""
        self._settle_milestones()
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
        self._settle_milestones()
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
        return self._score_here(upto)

    def _score_here(self, upto: Mapping[str, int]) -> float | None:
        try:
            return analyze_history(history_frame(self._columns, upto), params=self.params).quality_score
        except Exception as exc:  # too little history yet, or odd values: send without a score
            log.debug("no provisional score: %s", exc)
            return None

    def _finish_in_send_helper(self, event: NotificationEvent, upto: Mapping[str, int]) -> bool:
        """Hands the milestone message to the notifier's send helper, which scores it (``finish_milestone``) and
        sends it: the training process writes once into a pipe and does nothing more for it (bench/RESULTS.md
        B4). False when the notifier has no such helper now (none, lost, or callbacks that must see the score)."""
        if not self.notifier.finishes_in_helper:
            return False
        points = new_points(self._columns, upto, self._in_send_helper)
        if sum(len(steps) + len(values) for steps, values in points.values()) > SEND_HELPER_MAX_BYTES:
            return False
        payload = (points, self.params, self.manager.start_step)
        if not self.notifier.send_finished(event, FINISHER, payload):
            return False
        self._in_send_helper.update({key: upto[key] for key in points})
        return True

    def _score_and_send(self, event: NotificationEvent, upto: Mapping[str, int]) -> Future:
        """Sends the milestone message with its provisional score; done when it is sent.

        With the helper running, the request goes into its pipe from this (the training) thread and the
        helper's reader thread sends the message when the score is back: no other thread of the training
        process wakes up (bench/RESULTS.md B4). Otherwise (the helper is not up yet, or is gone, or an earlier
        milestone is still waiting, which must go first), the scorer thread does it all, as ``_send_with_score``.
        """
        if self._helper is not None and self._helper.running and not self._pending:
            sent: Future = Future()

            def on_reply(answered: bool, score: float | None) -> None:  # on the helper's reader thread
                try:
                    self._send_scored(event, score if answered else self._score_here(upto))
                finally:
                    sent.set_result(None)

            if self._helper.request(self._columns, upto, self.params, on_reply):
                return sent
        return self._scorer.submit(self._send_with_score, event, upto)

    def _settle_milestones(self) -> None:
        """Waits for the milestone messages still waiting for their score; a helper that does not answer within
        its ``ANSWER_TIMEOUT`` is closed, and what it owed is scored here."""
        if self._helper is not None and wait(self._pending, timeout=ScoreHelper.ANSWER_TIMEOUT).not_done:
            self._helper.close()
        wait(self._pending)

    def _send_with_score(self, event: NotificationEvent, upto: Mapping[str, int]) -> None:
        self._send_scored(event, self.provisional_score(upto))

    def _send_scored(self, event: NotificationEvent, score: float | None) -> None:
        self._send(with_score(event, score, self.manager.start_step))

    def _on_stall(self, seconds: float, step: int | None) -> None:
        event = self.watch.record_stall(seconds, step, total_steps=self.manager.total_steps, phase=self.phase)
        if event is not None:
            self._send(event)


FINISHER = "tracking.monitor:finish_milestone"  # run by the notifier's send helper (Notifier.send_finished)
# More new points than this (bytes; 16 per point) go to the score helper instead: a write the send helper's pipe
# cannot take at once gives that helper up, while the score helper's writer thread waits for its pipe. 1,000
# points (250 logged steps of four metrics) per milestone fit.
SEND_HELPER_MAX_BYTES = 16_000


def with_score(event: NotificationEvent, score: float | None, start_step: int) -> NotificationEvent:
    """The milestone message ``event`` with its provisional score (``event`` itself when there is none)."""
    if score is None:
        return event
    details = event.details
    return milestone_event(event.milestone, ProgressUpdate(
        current_step=event.current_step, total_steps=event.total_steps,
        previous_step=max(0, event.current_step - 1),
        loss=details.get("loss"), eval_loss=details.get("eval_loss"),
        elapsed_seconds=details.get("elapsed_seconds"), quality_score=score,
        start_step=min(start_step, event.current_step)))


def new_points(columns: Mapping[str, tuple[array, array]], upto: Mapping[str, int],
               have: Mapping[str, int]) -> dict[str, tuple[bytes, bytes]]:
    """The points of each metric up to ``upto[key]`` that a helper holding ``have[key]`` of them lacks, as the
    raw bytes of the step and value arrays (``add_points`` reads them)."""
    points = {}
    for key, n in upto.items():
        start = have.get(key, 0)
        if n > start:
            steps, values = columns[key]
            points[key] = (steps[start:n].tobytes(), values[start:n].tobytes())
    return points


def add_points(columns: dict[str, tuple[array, array]], points: Mapping[str, tuple[bytes, bytes]]) -> None:
    """Appends ``new_points``' output to a helper's own columns."""
    for key, (steps, values) in points.items():
        key_columns = columns.setdefault(key, (array("q"), array("d")))
        key_columns[0].frombytes(steps)
        key_columns[1].frombytes(values)


def score_of(columns: Mapping[str, tuple[array, array]], params: Mapping[str, Any]) -> float | None:
    """``analyze_history``'s quality score of all of ``columns``' points; raises when they cannot be scored."""
    frame = history_frame(columns, {key: len(steps) for key, (steps, _) in columns.items()})
    return analyze_history(frame, params=params).quality_score


def finish_milestone(state: dict, event: dict, payload: tuple) -> dict:
    """In the send helper (``Notifier.send_finished``): the milestone message ``event`` (a dict) with the
    provisional score of every point sent so far; ``state`` keeps them between milestones. ``payload`` is
    (new points, params, start step); points that cannot be scored yet leave the message as it is."""
    points, params, start_step = payload
    columns = state.setdefault("columns", {})
    add_points(columns, points)
    try:
        score = score_of(columns, params)
    except Exception:  # too little history yet, or odd values: sent without a score
        return event
    return with_score(NotificationEvent.from_dict(event), score, start_step).to_dict()


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
    answer is ``analyze_history(...).quality_score`` of all of them, answered in the order asked.

    ``request`` writes into the helper's pipe from the caller's thread without ever blocking it (what the pipe
    does not take at once, a writer thread finishes) and the answer comes to a callback on the reader thread;
    ``score`` waits for it. When the helper cannot start, dies or does not answer within ``ANSWER_TIMEOUT``
    seconds, the waiting callers are told so (the monitor then scores on its own threads) and the helper is
    not used again."""

    ANSWER_TIMEOUT = 60.0  # the first answer waits for the helper's imports (1-3 s; more on a loaded machine)
    IDLE_CHECK = 5.0  # how often the reader looks for a request to time, when none was due

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._waiting: deque[tuple[OnScore, float]] = deque()  # callbacks of requests sent, and when
        self._backlog: deque[bytes] | None = None  # what the pipe did not take at once (the writer's)
        self._sent: dict[str, int] = {}  # points of each metric the helper has
        self._unusable = False
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> bool:
        """Start the process unless it runs already; False when there is none to use."""
        with self._lock:
            if self._process is not None or self._unusable:
                return self._process is not None
            try:
                process = child.start("tracking.monitor", "serve_scores")
            except Exception as exc:
                log.debug("no helper process for provisional scores (%s); they are computed here", exc)
                self._unusable = True
                return False
            os.set_blocking(process.stdin.fileno(), False)  # request() must never block the training thread
            threading.Thread(target=self._read_replies, args=(process,), daemon=True,
                             name="peft-studio-score-reader").start()
            self._process = process
            return True

    def request(self, columns: Mapping[str, tuple[array, array]], upto: Mapping[str, int],
                params: Mapping[str, Any], on_reply: OnScore) -> bool:
        """Asks for the score of the first ``upto[key]`` points of each of ``columns``' metrics, sending only the
        points the helper does not have yet; ``on_reply(answered, score)`` is called on the reader thread (the
        score is None when the points cannot be scored yet; ``answered`` is False when the helper is gone).
        False, with nothing sent, when the helper is not running (never started, gone, or given up)."""
        with self._lock:
            process = self._process
            if process is None:
                return False
            delta = new_points(columns, upto, self._sent)
            try:
                data = pickle.dumps((delta, dict(params)), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # params that cannot be pickled
                log.debug("the provisional-score request cannot be sent: %s", exc)
                return False
            if self._backlog is None:
                try:
                    written = os.write(process.stdin.fileno(), data)
                except BlockingIOError:
                    written = 0
                except (OSError, ValueError):  # the helper is gone
                    self._give_up(process, "is gone")
                    return False
                if written < len(data):
                    self._backlog = deque()
                    threading.Thread(target=self._write_backlog, args=(process,), daemon=True,
                                     name="peft-studio-score-writer").start()
                data = data[written:]
            if data:
                self._backlog.append(data)
            self._sent.update({key: upto[key] for key in delta})
            self._waiting.append((on_reply, time.monotonic()))
            return True

    def score(self, columns: Mapping[str, tuple[array, array]], upto: Mapping[str, int],
              params: Mapping[str, Any]) -> tuple[bool, float | None]:
        """(answered, score) for the first ``upto[key]`` points of each of ``columns``' metrics, waiting for it;
        the score is None when the helper could not score them (too little history yet)."""
        if not self.start():
            return False, None
        reply: Future = Future()
        if not self.request(columns, upto, params, lambda answered, score: reply.set_result((answered, score))):
            return False, None
        try:
            return reply.result(timeout=self.ANSWER_TIMEOUT + 5)  # the reader gives up first; this is a backstop
        except FutureTimeout:
            log.debug("the provisional-score helper did not answer; scores are computed here from now on")
            self.close()
            return False, None

    def close(self) -> None:
        """Close its pipe (it exits at once) and reap it; requests still waiting are answered as unanswered,
        and it is not used again."""
        with self._lock:
            process, self._process = self._process, None
            self._unusable = True
        if process is not None:
            child.stop(process, wait=5, kill=True)

    def _give_up(self, process: subprocess.Popen, why: str) -> None:
        """Kill the helper (the lock is held); its reader answers what was waiting as unanswered."""
        log.debug("the provisional-score helper %s; scores are computed here from now on", why)
        self._process = None
        self._unusable = True
        process.kill()

    def _write_backlog(self, process: subprocess.Popen) -> None:
        """Writes what ``request`` could not without blocking (a large request, or a helper busy scoring)."""
        fd = process.stdin.fileno()
        while True:
            with self._lock:
                if not self._backlog or self._process is not process:
                    self._backlog = None
                    return
                data = self._backlog[0]
            try:
                select.select([], [fd], [], 1.0)
                written = os.write(fd, data)
            except BlockingIOError:
                continue
            except (OSError, ValueError):  # gone or closed: the reader answers what was waiting
                with self._lock:
                    self._backlog = None
                return
            with self._lock:
                if written == len(data):
                    self._backlog.popleft()
                else:
                    self._backlog[0] = data[written:]

    def _read_replies(self, process: subprocess.Popen) -> None:
        """Answers each waiting request in order; gives the helper up when the oldest has waited longer than
        ``ANSWER_TIMEOUT``. Replies are length-prefixed pickles read with ``os.read``, so the wait can time out."""
        fd, buffer = process.stdout.fileno(), bytearray()
        try:
            while True:
                with self._lock:
                    oldest = self._waiting[0][1] if self._waiting else None
                if oldest is None:  # nothing due: look again in a while (a request does not wake this thread)
                    left = self.IDLE_CHECK
                else:
                    left = oldest + self.ANSWER_TIMEOUT - time.monotonic()
                if left <= 0:
                    with self._lock:
                        if self._process is process:
                            self._give_up(process, "did not answer in time")
                    break
                if not select.select([fd], [], [], left)[0]:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break  # EOF: the helper exited or was killed
                buffer += chunk
                while len(buffer) >= _LENGTH.size:  # every whole reply in the buffer
                    end = _LENGTH.size + _LENGTH.unpack_from(buffer)[0]
                    if len(buffer) < end:
                        break
                    score, error = pickle.loads(buffer[_LENGTH.size:end])
                    del buffer[:end]
                    if error:
                        log.debug("no provisional score: %s", error)
                    with self._lock:
                        on_reply, _ = self._waiting.popleft()
                    _answer(on_reply, True, score)
        except Exception:  # a broken reply: the helper is not to be trusted
            log.debug("the provisional-score helper sent a broken reply", exc_info=True)
        with self._lock:
            if self._process is process:
                self._give_up(process, "ended")
            waiting = [on_reply for on_reply, _ in self._waiting]
            self._waiting.clear()
        for on_reply in waiting:  # scored elsewhere by their callers
            _answer(on_reply, False, None)
        try:
            process.wait(timeout=5)  # reap it
        except Exception:
            pass


def _answer(on_reply: OnScore, answered: bool, score: float | None) -> None:
    try:
        on_reply(answered, score)
    except Exception:  # a failed send must not stop the reader
        log.warning("a milestone message with its provisional score failed", exc_info=True)


def serve_scores() -> None:
    """The helper process: read (new points, params) requests from stdin, answer (score, error) on stdout,
    exit when stdin closes (the monitor closed it, or the training process ended in any way)."""
    requests, answers = child.serve_pipes()
    columns: dict[str, tuple[array, array]] = {}
    while True:
        try:
            delta, params = pickle.load(requests)
        except Exception:  # EOF: the monitor is done
            break
        add_points(columns, delta)
        try:
            reply = (score_of(columns, params), None)
        except Exception as exc:  # too little history yet, or odd values
            reply = (None, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_LENGTH.pack(len(data)) + data)
        answers.flush()
    answers.flush()
    os._exit(0)  # nothing to clean up: skip the interpreter's teardown
