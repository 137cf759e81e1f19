"""Sending from a helper process, so that apprise and requests do not take the training process's GIL.

Why: a send to a healthy webhook is a few milliseconds of Python (building the request, urllib3, parsing the
answer); on a thread of the training process it competes with the training step for the GIL, and the step
that crosses a milestone took 1.3-1.9x the median step (bench/RESULTS.md B4). Here the training process only
pickles ``(channel URL, event, attachments)`` into a pipe; the helper process loads the channel from its URL
once, fits the event to it (``message_for``, as an in-process send does) and sends it on a thread of its own,
so a slow channel never holds up another.

A helper that dies while it sends (killed, out of memory) leaves those sends unanswered: the notifier sends them
again itself, so such a message may arrive twice, never not at all.

The helper is a child of the training process (``notify.delivery.child``): it reads requests from its stdin
and exits when stdin closes; what went wrong comes back in the answer, redacted by the notifier like any
other error. When it cannot start,
dies or cannot load a channel, ``SendHelper.send`` answers None and the notifier sends in-process.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import notify.delivery.child as child

logger = logging.getLogger(__name__)

# An answer: (ok, error, timed_out, last send time of the service for its rate limit), or None: not sent here.
Answer = tuple[bool, "str | None", bool, Any]


class SendHelper:
    """One helper process for a notifier's sends; thread-safe (each channel's lane calls ``send``)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._unusable = False
        self._lock = threading.Lock()  # guards the process and the pipe
        self._waiting: dict[int, Future] = {}
        self._ids = itertools.count()

    def start(self, urls: Sequence[str] = ()) -> bool:
        """Start the process unless it runs already, and have it load the channels at ``urls`` now (apprise
        loads its plugins on the first one, 0.2-1 s), not at the first message; False when there is none."""
        with self._lock:
            if self._process is not None or self._unusable:
                return self._process is not None
            try:
                self._process = child.start("notify.delivery.helper", "serve")
            except Exception as exc:
                logger.debug("notify: no helper process for sending (%s); sends run in this process", exc)
                self._unusable = True
                return False
            threading.Thread(target=self._read_answers, args=(self._process,), daemon=True,
                             name="notify-helper-reader").start()
            try:
                for url in urls:
                    self._process.stdin.write(pickle.dumps((None, url, None, [], 0.0)))
                self._process.stdin.flush()
            except Exception:  # the reader notices a helper that is gone
                pass
            return True

    def send(self, url: str, event: Any, attachments: Sequence[str], timeout: float) -> Answer | None:
        """Send ``event`` to the channel at ``url`` (its private URL) from the helper, waiting at most
        ``timeout`` seconds; None when the helper cannot do it (the caller sends in-process instead)."""
        if not self.start():
            return None
        future: Future = Future()
        with self._lock:
            if self._process is None:
                return None
            request_id = next(self._ids)
            request = pickle.dumps((request_id, url, event.to_dict(), list(attachments), timeout),
                                   protocol=pickle.HIGHEST_PROTOCOL)
            self._waiting[request_id] = future
            try:
                self._process.stdin.write(request)
                self._process.stdin.flush()
            except Exception as exc:  # the helper died
                logger.debug("notify: the send helper is gone (%s); sends run in this process", exc)
                self._waiting.pop(request_id, None)
                return None
        try:
            return future.result(timeout=timeout + 1.0)  # the helper bounds the send itself; 1 s for the pipe
        except FutureTimeout:
            with self._lock:
                self._waiting.pop(request_id, None)
            return False, f"timed out after {timeout:g} s", True, None

    def _read_answers(self, process: subprocess.Popen) -> None:
        try:
            while True:
                request_id, answer = pickle.load(process.stdout)
                with self._lock:
                    future = self._waiting.pop(request_id, None)
                if future is not None:
                    future.set_result(answer)
        except Exception:  # EOF (the helper exited) or a broken answer: everything waiting is sent in-process
            with self._lock:
                self._unusable = True
                self._process = None
                waiting, self._waiting = list(self._waiting.values()), {}
            for future in waiting:
                future.set_result(None)

    def close(self) -> None:
        """Close its pipe (it exits once its sends are done or abandoned) and do not use it again."""
        with self._lock:
            process, self._process = self._process, None
            self._unusable = True
        if process is not None:  # sends still running are the notifier's to wait for, not ours
            child.stop(process, wait=0.5, kill=False)


def serve() -> None:
    """The helper process: read requests from stdin, send each on a daemon thread, answer on stdout."""
    from notify.delivery.attempt import attempt
    from notify.delivery.channels import make_asset
    from notify.delivery.messages import message_for

    requests, answers = child.serve_pipes(nice=10)  # the training process comes first for the CPU
    write = threading.Lock()
    loading = threading.Lock()
    services: dict[str, Any] = {}
    asset = make_asset()

    def answer(request_id: int, result: Answer | None) -> None:
        with write:
            pickle.dump((request_id, result), answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()

    def send(request_id: int | None, url: str, event: dict[str, Any] | None, attachments: list[str],
             timeout: float) -> None:
        try:
            import apprise

            from notify.events import NotificationEvent

            with loading:
                if url not in services:
                    services[url] = apprise.Apprise.instantiate(url, asset=asset)
                service = services[url]
            if request_id is None:  # only loading the channel, ahead of its first message
                return
            if service is None:  # cannot be loaded from its URL here: the notifier sends it itself
                answer(request_id, None)
                return
            target, message = message_for(service, NotificationEvent.from_dict(event))
            ok, error, timed_out = attempt(target, message, attachments, timeout)
            answer(request_id, (ok, error, timed_out, getattr(target, "_last_io_datetime", None)))
        except Exception as exc:
            answer(request_id, (False, f"{type(exc).__name__}: {exc}", False, None))

    while True:
        try:
            request = pickle.load(requests)
        except Exception:  # EOF: the notifier is done
            break
        threading.Thread(target=send, args=request, daemon=True).start()
