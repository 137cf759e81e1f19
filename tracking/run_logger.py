"""Metrics and tags for one MLflow run, sent in batches from a background thread.

Why: one logging request per step costs the training loop 1-10 ms (a sqlite commit or an HTTP round trip),
and MLflow's own ``synchronous=False`` mode still drains one request per step at the end. Here the loop
pays for an append; a thread sends up to 1,000 points per ``log_batch``. When the tracking store fails
(server restarted, sqlite "database is locked") the same batch is retried, in order, until it goes
through: MLflow skips points a run already has, so resending after a lost answer is safe. What cannot be
sent (the server never came back, or the buffer outgrew its bound) goes to a local JSON-lines file that
``peft-studio upload FILE`` sends later (``upload_unsent``). When that file cannot be written either (disk
full, read-only folder), points wait in memory up to the bound; the oldest beyond it are lost, said once and
counted in ``LoggerReport.lost``: the thread never dies, so later points are still sent.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limits
MAX_TAGS_PER_REQUEST = 100
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between attempts; the last one repeats

# One buffered item: MLflow's own entities, as log_batch takes them.
Item = Metric | RunTag


# How an on_trouble message about the unsent-points file begins (the others are about the store being away).
CANNOT_KEEP = "points cannot be kept"


@dataclass(frozen=True)
class LoggerReport:
    """What ``RunLogger.close`` achieved: everything sent, or how much waits in ``unsent_path``, and how
    many points were lost because that file could not be written."""

    sent: int
    unsent: int
    unsent_path: Path | None
    last_error: str | None
    lost: int = 0

    @property
    def complete(self) -> bool:
        """Every point is in the run."""
        return self.unsent == 0 and self.lost == 0


class RunLogger:
    """Buffered, ordered, retried logging of metrics and tags to one run. Thread-safe.

    ``on_trouble(message)`` is called once per outage, and once when points cannot be kept in the file
    (on the logging thread, or in ``close``), e.g. to notify the user.
    ``unsent_path`` is where points that cannot be sent are kept (created only when needed); while the
    logger uploads it, its points sit in a sibling ``NAME.sending``.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, unsent_path: str | Path,
                 flush_interval: float = 2.0, max_buffered: int = 200_000,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 on_trouble: Callable[[str], None] | None = None):
        self.client = client
        self.run_id = run_id
        self.unsent_path = Path(unsent_path)
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.retry_delays = retry_delays
        self.on_trouble = on_trouble
        self.sent = 0
        self.unsent = 0  # items written to unsent_path and not uploaded since
        self.lost = 0  # items neither sent nor kept: the file could not be written
        self._rotated = 0  # items moved to _sending_path for an upload that has not gone through yet
        self._sending_path = self.unsent_path.with_name(self.unsent_path.name + ".sending")
        self._keep_error: str | None = None  # set while the file cannot be written (said once)
        self._untold: str | None = None  # a message for on_trouble, called without the lock
        self.failures = 0
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._inflight: list[Item] = []
        self._appended = 0
        self._settled = 0  # items sent or written to the file, in order
        self._flush_wanted = False
        self._closing = False
        self._deadline = float("inf")
        self._abandoned = False
        self._thread = threading.Thread(target=self._work, name="peft-studio-mlflow", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the training loop's side: appends only ---------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        items = [Metric(key, float(value), ts, int(step)) for key, value in metrics.items()]
        with self._cond:
            self._queue.extend(items)
            self._appended += len(items)
            if len(self._queue) >= MAX_METRICS_PER_REQUEST:
                self._cond.notify_all()

    def set_tag(self, key: str, value) -> None:
        with self._cond:
            self._queue.append(RunTag(key, str(value)))
            self._appended += 1

    @property
    def healthy(self) -> bool:
        """False while the last attempt to send failed (the store is away)."""
        return self.last_error is None

    def flush(self, timeout: float | None = None, patience: float | None = None) -> bool:
        """Wait until everything logged before this call is sent (or kept in the file). False when
        ``timeout`` passes first, once the store has been failing for ``patience`` seconds, or when points
        were lost (the file could not be written)."""
        deadline = float("inf") if timeout is None else time.monotonic() + timeout

        def done_or_hopeless() -> bool:
            now = time.monotonic()
            failing = self._failing_since is not None and patience is not None and now - self._failing_since > patience
            return self._settled >= target or self._abandoned or failing or now >= deadline

        with self._cond:
            target = self._appended
            self._flush_wanted = True
            self._cond.notify_all()
            while not done_or_hopeless():
                self._cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return self._settled >= target and self.lost == 0

    def close(self, timeout: float = 30.0, status: str | None = None) -> LoggerReport:
        """Send what is buffered, retrying for up to ``timeout`` seconds; keep the rest in the file.
        ``status`` (FINISHED, FAILED, KILLED) is recorded in the file too, so an upload can end the run.
        Never raises: what can be neither sent nor kept is counted in the report's ``lost``."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1.0)
        with self._cond:
            self._abandoned = True  # a send or upload still stuck in MLflow's own retries no longer counts
            self._restore_rotated()
            left = self._inflight + list(self._queue)
            self._inflight, self._queue = [], deque()
            if left and not self._keep_unsent(left):
                self._lose(len(left))
            if self.unsent and status:
                self._write_unsent([{"status": status}])
            self._cond.notify_all()
        self._tell()
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover - interpreter shutting down
            pass
        return LoggerReport(self.sent, self.unsent, self.unsent_path if self.unsent else None, self.last_error,
                            self.lost)

    # -- the logging thread ---------------------------------------------------------------------------
    def _work(self) -> None:
        """Why the guard: an exception escaping the loop would end the thread silently, and every later point
        would be neither sent nor kept while training goes on. The loop restarts where it was (the batch in
        flight stays in ``_inflight``)."""
        told = False
        while True:
            try:
                self._work_loop()
                return
            except Exception as exc:
                (log.debug if told else log.warning)("the metrics thread hit %s; it goes on", _one_line(exc),
                                                     exc_info=not told)
                told = True
                with self._cond:
                    if self._abandoned or (self._closing and time.monotonic() >= self._deadline):
                        return  # close() keeps what is left in the file
                    self._cond.wait(self.flush_interval)

    def _work_loop(self) -> None:
        """Take a batch, send it; on success settle it (and upload what was kept while the store was away),
        on failure wait and send the same batch again. Returns when closed and empty, or abandoned."""
        attempt = 0
        while (batch := self._next_batch()) is not None:
            error = self._send(batch)
            if error is None:
                recovered = self.last_error is not None
                if not self._settle_sent(batch):
                    return
                attempt = 0
                if recovered:
                    self._upload_kept()
                continue
            first = self.last_error is None
            delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
            attempt += 1
            if not self._note_failure(error, delay):
                return  # close() keeps what is left in the file
            if first and self.on_trouble is not None:
                self._call_on_trouble(error)
            self._tell()
            log.warning("MLflow did not take %d point(s) (%s); retrying in %.0f s", len(batch), error, delay)
            with self._cond:
                self._cond.wait_for(lambda: self._closing and time.monotonic() >= self._deadline, delay)

    def _next_batch(self) -> list[Item] | None:
        """The batch to send: the one still in flight (a retry), else the next one once there is enough to
        send, a flush is asked for, or ``flush_interval`` passed. None when closed with nothing left."""
        with self._cond:
            while not self._inflight:
                if self._abandoned:
                    return None
                self._cond.wait_for(lambda: self._closing or self._flush_wanted
                                    or len(self._queue) >= MAX_METRICS_PER_REQUEST, self.flush_interval)
                if self._queue:
                    self._inflight = _take_batch(self._queue)
                else:
                    self._flush_wanted = False
                    if self._closing or self._abandoned:
                        return None
            return list(self._inflight)

    def _settle_sent(self, batch: list[Item]) -> bool:
        """The batch is in the run; False when close() gave up on the thread meanwhile."""
        with self._cond:
            if self._abandoned:
                return False
            self._inflight = []
            self.sent += len(batch)
            self._settled += len(batch)
            self.last_error, self._failing_since = None, None
            self._cond.notify_all()
            return True

    def _note_failure(self, error: str, delay: float) -> bool:
        """Record a failed send and bound the memory it costs; False when the thread should stop now
        (abandoned, or closing with no time left for another attempt)."""
        with self._cond:
            if self._abandoned:
                return False
            self.failures += 1
            if self.last_error is None:
                self._failing_since = time.monotonic()
            self.last_error = error
            if len(self._queue) > self.max_buffered:  # bound memory: oldest waiting points go to disk
                overflow = [self._queue.popleft() for _ in range(len(self._queue) - self.max_buffered // 2)]
                if not self._keep_unsent(overflow):  # no file: the newest stay, up to the bound
                    room = self.max_buffered - len(self._queue)
                    self._queue.extendleft(reversed(overflow[len(overflow) - room:]))
                    self._lose(len(overflow) - room)
            return not (self._closing and time.monotonic() + delay > self._deadline)

    def _send(self, batch: list[Item]) -> str | None:
        metrics = [item for item in batch if isinstance(item, Metric)]
        tags = [item for item in batch if isinstance(item, RunTag)]
        try:
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
            return None
        except Exception as exc:  # any store failure: keep the batch and retry it
            return _one_line(exc)

    def _call_on_trouble(self, error: str) -> None:
        try:
            self.on_trouble(error)
        except Exception as exc:
            log.warning("the tracking-trouble callback failed: %s", exc)

    def _tell(self) -> None:
        """Pass a message set with the lock held to ``on_trouble``, without the lock (it may be slow)."""
        with self._cond:
            message, self._untold = self._untold, None
        if message and self.on_trouble is not None:
            self._call_on_trouble(message)

    def _keep_unsent(self, items: list[Item]) -> bool:
        """Called with the lock held; the items count as settled (kept, in order). False when the file
        cannot be written: the items are not kept, and the caller keeps them in memory or loses them."""
        if not self._write_unsent([_item_to_json(i) for i in items]):
            return False
        self.unsent += len(items)
        self._settled += len(items)
        return True

    def _lose(self, count: int) -> None:
        """Called with the lock held: points neither sent nor kept count as settled, so no flush waits for
        them, and as lost, so the report says so."""
        self.lost += count
        self._settled += count

    def _write_unsent(self, records: list[dict]) -> bool:
        """Append to the file; False, said once until a write works again, when it cannot be written (disk
        full, read-only or missing folder): that must not end the thread nor make close() raise."""
        try:
            self.unsent_path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.unsent_path.exists()
            lines = [json.dumps({"run_id": self.run_id})] if new else []
            lines += [json.dumps(record) for record in records]
            with self.unsent_path.open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
        except Exception as exc:
            if self._keep_error is None:
                self._keep_error = _one_line(exc)
                self._untold = (f"{CANNOT_KEEP} in {self.unsent_path} ({self._keep_error}); they wait "
                                f"in memory (up to {self.max_buffered}), older ones are lost")
                log.warning("%s", self._untold)
            return False
        self._keep_error = None
        return True

    def _upload_kept(self) -> None:
        """The store is back: send what was kept in the file meanwhile. Why the rotation: the file is first
        renamed to ``NAME.sending``, so points kept while it uploads (close() keeping what is left) go to a
        new file and are never deleted unsent; only the renamed file is deleted, once sent. A renamed file
        left by a crash or a failed upload is sent first (it is never overwritten)."""
        sending = self._sending_path
        try:
            while True:
                with self._cond:
                    if self._abandoned:
                        return
                    if not sending.exists():
                        if not self.unsent_path.exists():
                            return
                        os.replace(self.unsent_path, sending)
                        self._rotated += self.unsent
                        self.unsent = 0
                upload_unsent(self.client, sending)
                with self._cond:
                    if self._abandoned:
                        return  # close() has put the file back where the report says
                    sending.unlink(missing_ok=True)
                    self.sent += self._rotated
                    self._rotated = 0
        except Exception as exc:
            log.warning("could not upload %s yet: %s", sending, _one_line(exc))

    def _restore_rotated(self) -> None:
        """Called by close() with the lock held: points renamed aside for an upload that has not gone through
        go back in front of ``unsent_path``, the one file the report names."""
        if not self._rotated:
            return
        try:
            if self.unsent_path.exists():  # newer points, kept since the rename: after the older ones
                newer = self.unsent_path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]
                with self._sending_path.open("a", encoding="utf-8") as out:
                    out.writelines(newer)
            os.replace(self._sending_path, self.unsent_path)
        except Exception as exc:
            log.error("%d kept point(s) of run %s remain in %s: %s", self._rotated, self.run_id,
                      self._sending_path, _one_line(exc))
        self.unsent += self._rotated
        self._rotated = 0


def _take_batch(queue: deque) -> list[Item]:
    """The oldest items that fit in one log_batch request, in order."""
    batch, metrics, tags = [], 0, 0
    while queue:
        is_metric = isinstance(queue[0], Metric)
        if (metrics if is_metric else tags) == (MAX_METRICS_PER_REQUEST if is_metric else MAX_TAGS_PER_REQUEST):
            break
        batch.append(queue.popleft())
        metrics += is_metric
        tags += not is_metric
    return batch


def _item_to_json(item: Item) -> dict:
    if isinstance(item, Metric):
        return {"metric": [item.key, item.value, item.timestamp, item.step]}
    return {"tag": [item.key, item.value]}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@dataclass(frozen=True)
class UploadResult:
    run_id: str
    metrics: int
    tags: int
    status: str | None


def read_unsent(path: str | Path) -> tuple[str, list[Metric], list[RunTag], str | None]:
    """The run id, metrics, tags and final status kept in an unsent-points file."""
    path = Path(path)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or "run_id" not in lines[0]:
        raise ValueError(f"{path} is not a peft-studio unsent-points file (no run id on its first line)")
    metrics = [Metric(*r["metric"]) for r in lines if "metric" in r]
    tags = [RunTag(*r["tag"]) for r in lines if "tag" in r]
    statuses = [r["status"] for r in lines if "status" in r]
    return lines[0]["run_id"], metrics, tags, statuses[-1] if statuses else None


def upload_unsent(client: MlflowClient, path: str | Path) -> UploadResult:
    """Send a file of unsent points to its run. Safe to repeat: MLflow skips points the run already has,
    and a tag takes its latest value."""
    run_id, metrics, tags, status = read_unsent(path)
    for start in range(0, len(metrics), MAX_METRICS_PER_REQUEST):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_REQUEST])
    for start in range(0, len(tags), MAX_TAGS_PER_REQUEST):
        client.log_batch(run_id, tags=tags[start:start + MAX_TAGS_PER_REQUEST])
    return UploadResult(run_id, len(metrics), len(tags), status)

