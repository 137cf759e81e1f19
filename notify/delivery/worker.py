"""Delivering notifications without ever blocking or breaking the training loop.

``Notifier.send(event)`` only puts the event on a bounded queue and returns. A daemon dispatcher thread
takes events in order, calls the registered Python callbacks, and hands the event to every channel that
routes it (``Channels.targets``). Each channel has its own queue and its own daemon thread, so a slow or
broken channel delays only itself, never another channel, and every channel has its own outcome:

* each attempt runs on a helper daemon thread and is abandoned after ``send_timeout`` seconds (a desktop
  service without a notification daemon can hang forever); a timed-out attempt is not retried, since it
  may have been delivered and a hung service would hang again;
* a failed attempt (the service said no, or raised) is retried up to ``retries`` times, waiting
  ``backoff``, ``2 * backoff``, ``4 * backoff``... seconds in between, and at least as long as apprise's
  rate limit for the service asks (``request_rate_per_sec``: 5.5 s for email, 1.2 s for Slack; it also
  spaces consecutive events to one service);
* a failure is logged (WARNING, redacted URL) and recorded, never raised;
* with ``send_from_helper=True`` (what the training job uses) all of the above runs in a helper process
  (``notify.delivery.helper``): ``send`` pickles the event into its pipe from the caller's thread, and no
  thread of this process wakes up for a send, only one for each outcome that comes back (callbacks, when
  there are any, still run on a thread here). The notifier falls back to sending itself when the helper
  cannot start or load the channels, falls behind, or dies;
* ``send_finished`` lets the helper complete an event just before sending it (a "module:function" finisher
  run in the helper: the training job's provisional score in milestone messages), so that the work of
  completing it is not the training process's either.

When a queue is full the oldest progress event is dropped (then start, then warning; errors and the
completion last) and recorded as dropped. ``close()`` (also run at interpreter exit) delivers what is
queued within ``flush_timeout`` seconds, every channel at once, and records what it could not. A channel
that is failing or rate-limited then sends its most important events first (errors and the completion
before any older progress event); a quick one keeps the order the events were sent in.

``records`` keep one dict per event: ``event`` (its ``to_dict()``), ``time`` (ISO 8601, UTC),
``attachments``, ``dropped`` (no channel ever got to try it) and ``deliveries``, one per channel, in the
order of the channels:
``{"channel": <redacted url>, "ok": bool, "attempts": int, "error": str | None, "seconds": float}``, plus
``"dropped": true`` on those never attempted. ``write_jsonl`` writes them as the run's
``notifications/events.jsonl``. Nothing recorded or logged carries a password or token from a URL.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import pickle
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from apprise import NotifyType

from notify.delivery.attempt import attempt
from notify.delivery.channels import Channels
from notify.delivery.helper import SendHelper
from notify.delivery.messages import message_for
from notify.events import EventType, NotificationEvent

TEST_TITLE = "peft-studio test message"
TEST_BODY = "If you can read this, peft-studio can send notifications to this channel."

# Which queued event gives way first when the queue is full (lowest first; ties: the oldest).
DROP_ORDER = {
    EventType.PROGRESS: 0,
    EventType.START: 1,
    EventType.WARNING: 2,
    EventType.ERROR: 3,
    EventType.COMPLETION: 3,
}

logger = logging.getLogger(__name__)

Callback = Callable[[NotificationEvent], Any]


class Notifier:
    """Sends events to channels on a background thread; see the module docstring for the guarantees."""

    def __init__(
        self,
        channels: Channels,
        *,
        send_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        flush_timeout: float = 15.0,
        max_queue: int = 100,
        send_from_helper: bool = False,
    ) -> None:
        if not isinstance(channels, Channels):
            raise ValueError(f"channels must be a Channels (see load_channels), got {type(channels).__name__}")
        _check_seconds("send_timeout", send_timeout, positive=True)
        _check_seconds("backoff", backoff)
        _check_seconds("flush_timeout", flush_timeout)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a whole number >= 1, got {max_queue!r}")
        self.channels = channels
        self.send_timeout = float(send_timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.flush_timeout = float(flush_timeout)
        self.max_queue = max_queue
        self._callbacks: list[Callback] = []
        self._lock = threading.Condition()  # guards every queue, record and flag below
        self._queue: deque[_Pending] = deque()  # waiting for the dispatcher
        self._records: list[_Pending] = []
        self._current: _Pending | None = None  # with the dispatcher (its callbacks are running)
        self._lanes: dict[int, _Lane] = {}  # id(service) -> that channel's queue and thread
        self._closed = False
        self._stop = threading.Event()  # set when close() gives up: the threads end, waits end early
        self._helper: SendHelper | None = None
        if send_from_helper and len(channels):
            helper = SendHelper(self._remote_outcome, self._helper_lost, self._remote_finished)
            settings = {"send_timeout": self.send_timeout, "retries": retries, "backoff": self.backoff,
                        "flush_timeout": self.flush_timeout, "max_queue": max_queue}
            self._helper = helper if helper.start(channels.portable(), settings) else None
        self._worker = threading.Thread(target=self._dispatch, name="notify-delivery", daemon=True)
        self._worker.start()
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    # --- the caller's side: never blocks -----------------------------------------------------------

    def send(
        self,
        event: NotificationEvent,
        attachments: Iterable[str | os.PathLike[str]] = (),
        on_outcome: Callable[[int, dict[str, Any], bool], Any] | None = None,
    ) -> bool:
        """Queues ``event`` (with files to attach where the channel takes files) and returns at once.

        Returns False when the event was not queued (the notifier is closed, or the queue is full of more
        important events); that outcome is recorded as dropped. With the send helper, a full queue is the
        helper's to find, so ``send`` says True and the record says dropped. ``on_outcome(channel index,
        delivery, dropped)`` is called, on a thread of the notifier, as each channel's outcome is known.
        """
        if not isinstance(event, NotificationEvent):
            raise ValueError(f"event must be a NotificationEvent, got {type(event).__name__}")
        pending = _Pending(event, tuple(os.fspath(path) for path in attachments), self.channels, on_outcome)
        with self._lock:
            key = len(self._records)
            self._records.append(pending)
            if self._closed:
                self._drop(pending, "not sent: the notifier was closed")
                return False
            if pending.targets and self._helper is not None:
                pending.remote = self._helper.send(key, event, pending.attachments)
            return self._enqueue(pending)

    @property
    def finishes_in_helper(self) -> bool:
        """Whether ``send_finished`` can hand an event to the send helper now."""
        return self._helper is not None and self._helper.usable and not self._callbacks and not self._closed

    def prepare_finisher(self, finisher: str) -> bool:
        """Has the send helper import ``finisher`` ("module:function") now rather than at its first use."""
        return self._helper is not None and self._helper.prepare(finisher)

    def send_finished(self, event: NotificationEvent, finisher: str, payload: Any) -> bool:
        """Like ``send``, but the send helper sends ``function(state, event.to_dict(), payload)`` instead of
        ``event``: ``finisher`` is "module:function" in this checkout's packages, run in the helper process
        with a dict ``state`` it keeps across sends. The record then holds the event as sent. If the finisher
        fails, ``event`` is sent as it is; if the helper is lost before it sent it, this process sends ``event``.

        Returns False, with nothing sent or recorded, when the helper cannot take it: there is none, it is
        lost, or callbacks are registered (they run here, and would see ``event`` unfinished). The caller then
        finishes the event itself and uses ``send``.
        """
        if not isinstance(event, NotificationEvent):
            raise ValueError(f"event must be a NotificationEvent, got {type(event).__name__}")
        pending = _Pending(event, (), self.channels)
        with self._lock:
            if not self.finishes_in_helper or not pending.targets:
                return False
            key = len(self._records)
            try:
                pending.remote = self._helper.send(key, event, (), finish=(finisher, payload))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a payload that cannot be pickled
                logger.debug("notify: cannot hand the helper a payload for %s: %s", finisher, exc)
                return False
            self._records.append(pending)
            self._enqueue(pending)  # lost just now: it goes out from here as it is
        return True

    def _enqueue(self, pending: _Pending) -> bool:
        """Queues a recorded event for the dispatcher (the lock is held), unless the helper has it and there is
        no callback to run; False when it gave way at once to more important events."""
        if pending.remote and not self._callbacks:
            return True  # nothing here to wake
        victim = _push(self._queue, pending, self.max_queue)
        if victim is not None:
            if victim.remote:  # the helper delivers it: only its callbacks are skipped
                logger.warning("notify: callbacks skipped for %r: more than %d events were waiting",
                               victim.event.title, self.max_queue)
            else:
                self._drop(victim, f"dropped: more than {self.max_queue} notifications were waiting")
        self._lock.notify_all()
        return victim is not pending or pending.remote

    def add_callback(self, fn: Callback) -> Callback:
        """Calls ``fn(event)`` on the dispatcher thread for every event it takes, before the channels (with the
        send helper, while the helper sends).

        Keep it quick: the channels wait for it. Exceptions in ``fn`` are logged, never raised. Events
        dropped from a full queue or sent after ``close()`` never reach it. Returns ``fn``, so it works as
        a decorator.
        """
        if not callable(fn):
            raise ValueError(f"a notification callback must be callable, got {fn!r}")
        with self._lock:
            self._callbacks.append(fn)
        return fn

    register_notification_callback = add_callback

    def close(self, timeout: float | None = None) -> None:
        """Delivers what is queued within ``timeout`` (default ``flush_timeout``) seconds, then stops.

        Every channel delivers at the same time; a slow one its most important events first. Safe to call twice.
        Whatever is still undelivered then is recorded as not sent.
        """
        timeout = self.flush_timeout if timeout is None else max(float(timeout), 0.0)
        if threading.current_thread() is self._worker:  # from a callback: the worker cannot wait for itself
            timeout = 0.0
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            helper = self._helper
        if helper is not None:  # outside the lock: the outcomes coming back take it
            helper.close(deadline)
        with self._lock:
            while self._busy():
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                self._lock.wait(left)
            self._stop.set()
            self._lock.notify_all()
            gave_up = f"close() gave up after {timeout:g} s"
            while self._queue:
                pending = self._queue.popleft()
                if not pending.remote:  # a remote one is the helper's to account for
                    self._drop(pending, f"not sent: {gave_up}")
            if self._current is not None and not self._current.remote:
                self._current.seal(f"not sent: {gave_up}")
            for lane in self._lanes.values():
                while lane.queue:
                    lane.queue.popleft().seal(f"not sent: {gave_up}", lane.service)
                if lane.current is not None:
                    lane.current.seal(f"unknown: still sending when {gave_up}", lane.service)
            for pending in self._records:  # what a helper that did not answer in time had
                for service in pending.missing():
                    pending.seal(f"unknown: no answer from the send helper when {gave_up}" if pending.remote
                                 else f"not sent: {gave_up}", service)
        atexit.unregister(self._at_exit)

    # --- what happened -----------------------------------------------------------------------------

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per event sent, in order (a copy: later outcomes do not change it)."""
        with self._lock:
            return [json.loads(json.dumps(pending.record())) for pending in self._records]

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Writes ``records`` to ``path``, one JSON object per line (UTF-8)."""
        lines = [json.dumps(record, ensure_ascii=False) for record in self.records]
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the dispatcher: callbacks, then a hand-over to each channel's lane -------------------------

    def _busy(self) -> bool:
        return bool(self._queue or self._current is not None or any(lane.busy for lane in self._lanes.values()))

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed and not self._stop.is_set():
                    self._lock.wait()
                if self._stop.is_set() or not self._queue:
                    return
                pending = self._current = self._queue.popleft()
            try:
                self._run_callbacks(pending.event)
                with self._lock:
                    if not self._stop.is_set() and not pending.remote:
                        for service in pending.targets:
                            self._hand_over(pending, service)
            except Exception:  # a bug here must not kill the dispatcher or reach training
                logger.exception("notify: dispatching %r failed unexpectedly", pending.event.title)
            finally:
                with self._lock:
                    self._current = None
                    self._lock.notify_all()

    def _run_callbacks(self, event: NotificationEvent) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for fn in callbacks:
            try:
                fn(event)
            except Exception:
                logger.warning("notify: notification callback %r raised; ignored", fn, exc_info=True)

    def _hand_over(self, pending: _Pending, service: Any) -> None:
        """Queues ``pending`` for one channel (the lock is held); a full lane drops as ``send`` does."""
        lane = self._lanes.get(id(service))
        if lane is None:
            lane = self._lanes[id(service)] = _Lane(service)
            threading.Thread(
                target=self._run_lane, args=(lane,), name=f"notify-channel-{len(self._lanes)}", daemon=True
            ).start()
        victim = _push(lane.queue, pending, self.max_queue)
        if victim is not None:
            reason = f"dropped: more than {self.max_queue} notifications were waiting for this channel"
            victim.seal(reason, service)
            logger.warning("notify: %r %s (%s)", victim.event.title, reason, self.channels.redacted_url(service))

    # --- the send helper's side: outcomes that come back, and what happens when it is lost ------------

    def _remote_outcome(self, key: int, index: int, delivery: dict[str, Any], dropped: bool) -> None:
        """One channel's outcome for the event sent under ``key``, from the helper (its reader thread)."""
        service = self.channels.services[index]
        channel = self.channels.redacted_url(service)
        error = delivery.get("error")
        delivery = {**delivery, "channel": channel, "error": error and self.channels.redact(service, error)}
        with self._lock:
            pending = self._records[key]
            if dropped:
                pending.dropped = True
            pending.add(service, delivery)
        if not delivery["ok"]:  # the helper's own log goes nowhere
            logger.warning("notify: %r not delivered to %s after %d attempt(s): %s",
                           pending.event.title, channel, delivery["attempts"], delivery["error"])

    def _remote_finished(self, key: int, event: dict[str, Any] | None, error: str | None) -> None:
        """The helper finished the event sent under ``key`` (its reader thread): the record shows what it sent."""
        if error is not None:
            logger.debug("notify: the send helper could not finish an event (%s); it was sent as it was", error)
            return
        with self._lock:
            self._records[key].finish(event)

    def _helper_lost(self) -> None:
        """The helper cannot go on: this process delivers what has no outcome yet, and whatever comes next."""
        with self._lock:  # the helper refuses what comes next itself, so sends take the in-process path
            if self._stop.is_set():
                return
            for pending in self._records:
                if pending.remote:
                    for service in pending.missing():
                        self._hand_over(pending, service)
            self._lock.notify_all()

    # --- one channel's lane ------------------------------------------------------------------------

    def _run_lane(self, lane: _Lane) -> None:
        while True:
            with self._lock:
                while not lane.queue and not self._closed and not self._stop.is_set():
                    self._lock.wait()
                dispatching = self._queue or self._current is not None
                if self._stop.is_set() or (not lane.queue and not dispatching):
                    return
                if not lane.queue:  # closing, and the dispatcher may still hand this lane an event
                    self._lock.wait()
                    continue
                # Closing on a slow channel: the most important event first, so that a completion never
                # waits behind older progress; a quick channel keeps the order the events were sent in.
                pending = _most_important(lane.queue) if self._closed and lane.slow else lane.queue[0]
                lane.queue.remove(pending)
                lane.current = pending
            try:
                delivery = self._deliver_to(lane.service, pending.event, _existing(pending.attachments))
                with self._lock:
                    pending.add(lane.service, delivery)
                    lane.failing = not delivery["ok"]
            except Exception:  # a bug here must not kill the lane or reach training
                logger.exception("notify: delivering %r failed unexpectedly", pending.event.title)
            finally:
                with self._lock:
                    lane.current = None
                    self._lock.notify_all()

    def _deliver_to(self, service: Any, event: NotificationEvent, attachments: Sequence[str]) -> dict[str, Any]:
        channel = self.channels.redacted_url(service)
        target, message = message_for(service, event)
        start = time.monotonic()
        attempts, ok, error = 0, False, None
        for number in range(self.retries + 1):
            # Wait out the backoff, and apprise's rate limit for the service here, so that the
            # attempt's timeout bounds only the sending itself.
            pause = max(self.backoff * 2 ** (number - 1) if number else 0.0, _throttle_left(target))
            if pause and self._stop.wait(pause):
                error = "not sent: the notifier was closed" if error is None else f"{error}; not retried: closed"
                break
            attempts += 1
            ok, error, timed_out = self._attempt(service, event, target, message, attachments)
            if ok or timed_out:
                break
        _keep_throttle(service, target)
        error = None if ok else self.channels.redact(service, error or "failed")
        if not ok:
            logger.warning(
                "notify: %r not delivered to %s after %d attempt(s): %s", event.title, channel, attempts, error
            )
        return _delivery(channel, ok, attempts, error, time.monotonic() - start)

    def _attempt(
        self, service: Any, event: NotificationEvent, target: Any, message: dict[str, Any], attachments: Sequence[str]
    ) -> tuple[bool, str | None, bool]:
        """One attempt, here (a test replaces it to count attempts)."""
        return attempt(target, message, attachments, self.send_timeout)

    def _drop(self, pending: _Pending, reason: str) -> None:
        """``pending`` reaches no channel (the lock is held)."""
        pending.seal(reason)
        logger.warning("notify: %r %s", pending.event.title, reason)


class _Lane:
    """One channel's queue of events and the one it is sending; its thread is ``Notifier._run_lane``."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.queue: deque[_Pending] = deque()
        self.current: _Pending | None = None
        self.failing = False  # its last attempt failed or timed out

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.current is not None

    @property
    def slow(self) -> bool:
        """Failing, or rate-limited by apprise (email waits seconds between messages)."""
        return self.failing or (getattr(self.service, "request_rate_per_sec", 0) or 0) > 0


def _push(queue: deque[_Pending], pending: _Pending, limit: int) -> _Pending | None:
    """Appends ``pending``; past ``limit`` returns the event that gives way (already removed), else None."""
    queue.append(pending)
    if len(queue) <= limit:
        return None
    victim = min(queue, key=lambda p: DROP_ORDER[p.event.event_type])
    queue.remove(victim)
    return victim


def _most_important(queue: deque[_Pending]) -> _Pending:
    """The queued event to send first when time is short: the highest ``DROP_ORDER``, the oldest of ties."""
    return max(queue, key=lambda p: DROP_ORDER[p.event.event_type])


def test_channels(channels: Channels, timeout: float = 10.0) -> list[tuple[str, bool, str | None]]:
    """Sends one test message to every channel, now, and says for each ``(redacted url, ok, error)``."""
    _check_seconds("timeout", timeout, positive=True)
    results = []
    for service in channels:
        message = {"title": TEST_TITLE, "body": TEST_BODY, "notify_type": NotifyType.INFO}
        ok, error, _ = attempt(service, message, (), timeout)
        results.append((channels.redacted_url(service), ok, None if ok else channels.redact(service, error)))
    return results


test_channels.__test__ = False  # a product function, not a pytest test


# --- records ----------------------------------------------------------------------------------------------


class _Pending:
    """An event on its way and what became of it on each channel that routes it."""

    def __init__(
        self,
        event: NotificationEvent,
        attachments: tuple[str, ...],
        channels: Channels,
        on_outcome: Callable[[int, dict[str, Any], bool], Any] | None = None,
    ) -> None:
        self._event = event
        self._finished: dict[str, Any] | None = None  # what the send helper sent instead, not decoded yet
        self.attachments = attachments
        self.targets = channels.targets(event.event_type)
        self.remote = False  # handed to the send helper, which delivers it and answers each outcome
        self.dropped = False  # no channel ever got to try it
        self._channels = channels
        self._on_outcome = on_outcome
        self._time = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self._deliveries: dict[int, dict[str, Any]] = {}  # id(service) -> its outcome

    @property
    def event(self) -> NotificationEvent:
        finished = self._finished
        if finished is not None:  # decoded when first needed, not on the thread that reads the helper's answers
            self._event, self._finished = NotificationEvent.from_dict(finished), None
        return self._event

    def finish(self, event: dict[str, Any]) -> None:
        """The event as the send helper finished and sent it (``Notifier.send_finished``)."""
        self._finished = event

    def add(self, service: Any, delivery: dict[str, Any]) -> None:
        """The outcome on one channel; the first one said stands (a late answer after close is ignored)."""
        if id(service) in self._deliveries:
            return
        self._deliveries[id(service)] = delivery
        if self._on_outcome is not None:
            try:
                self._on_outcome(self._channels.index(service), delivery, self.dropped)
            except Exception:  # the caller's hook (the helper's pipe) must not break delivery
                logger.warning("notify: on_outcome for %r raised; ignored", self.event.title, exc_info=True)

    def missing(self) -> list[Any]:
        """The channels that route this event and have no outcome for it yet."""
        return [service for service in self.targets if id(service) not in self._deliveries]

    def seal(self, reason: str, service: Any | None = None) -> None:
        """Records ``reason`` for one channel (or, with no service, for the whole event) never tried."""
        if service is None:
            self.dropped = True
        for target in self.targets if service is None else [service]:
            channel = self._channels.redacted_url(target)
            self.add(target, _delivery(channel, False, 0, reason, 0.0, dropped=True))

    def record(self) -> dict[str, Any]:
        deliveries = [self._deliveries[id(s)] for s in self.targets if id(s) in self._deliveries]
        never_tried = bool(deliveries) and len(deliveries) == len(self.targets) and all(
            d.get("dropped") for d in deliveries
        )
        return {
            "event": self.event.to_dict(),
            "time": self._time,
            "attachments": list(self.attachments),
            "dropped": self.dropped or never_tried,
            "deliveries": deliveries,
        }


def _delivery(
    channel: str, ok: bool, attempts: int, error: str | None, seconds: float, *, dropped: bool = False
) -> dict[str, Any]:
    delivery = {"channel": channel, "ok": ok, "attempts": attempts, "error": error, "seconds": round(seconds, 3)}
    if dropped:
        delivery["dropped"] = True
    return delivery


def _throttle_left(service: Any) -> float:
    """Seconds until apprise's rate limit (``request_rate_per_sec``) lets this service send again."""
    last = getattr(service, "_last_io_datetime", None)
    rate = getattr(service, "request_rate_per_sec", 0) or 0
    if last is None or rate <= 0:
        return 0.0
    return max(0.0, rate - (datetime.now() - last).total_seconds())


def _keep_throttle(service: Any, target: Any) -> None:
    """The copy sent for one event hands its last send time back, so the next event respects it."""
    if hasattr(target, "_last_io_datetime"):
        service._last_io_datetime = target._last_io_datetime


def _existing(paths: Sequence[str]) -> list[str]:
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        else:
            logger.warning("notify: attachment %r does not exist; sending the text without it", path)
    return found


def _check_seconds(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    if positive and value == 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


def _close_at_exit(ref: weakref.ref[Notifier]) -> None:
    notifier = ref()
    if notifier is not None:
        notifier.close()
