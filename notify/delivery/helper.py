"""Delivering from a helper process, so that sending costs the training process no thread hand-off.

Why (bench/RESULTS.md B4): every hand-off between threads of the training process (a queue to a dispatcher, to
a channel's lane, to a thread waiting for the answer) is a wake-up that takes the GIL from the training step,
about 0.1 ms each on a small VM, and a send made four of them. Here ``Notifier.send`` pickles the event straight
into the helper's pipe from the caller's own thread (the pipe never blocks it: a helper that does not keep up is
given up). The helper runs a plain in-process ``Notifier`` on the same channels (same routing) and settings, so
the queueing, a lane per channel, retries, rate limits and the close-time ordering are the ones of an
in-process send, and writes back each channel's outcome as it is known. One reader thread in the training
process records them: one wake-up per outcome, none per send.

Messages, pickled: to the helper ``("config", Channels.portable(), settings)``, ``("prepare", finisher)``,
``("send", key, event dict, attachments, finish)`` and ``("close", deadline)`` (a ``time.monotonic`` value,
which is the same clock in both processes); back ``("finished", key, event dict or None, error or None)``,
``("outcome", key, channel index, delivery, dropped)``, ``("closed",)`` once the helper's own ``close`` is
done, or ``("unusable", reason)`` when it cannot load the channels.

A send can carry ``finish = (finisher, payload)``: the helper imports ``finisher`` ("module:function", from this
checkout's packages) and sends ``function(state, event dict, payload)`` instead of the event, ``state`` being a
dict the helper keeps for that finisher across sends. The training job finishes its milestone messages this
way (``tracking.monitor.finish_milestone``: the provisional score), so that a milestone costs the training
process one write into this pipe and nothing while the score is computed and sent. ``("finished", ...)``
tells the training process what was sent, for its records.

When the helper cannot start or load the channels, falls behind (its pipe is full) or dies before it closed,
``on_lost`` is called once and the notifier delivers, in-process, everything that has no outcome yet: a message
the helper had sent may then arrive twice, never not at all. When the training process dies instead, the
helper sees its pipe close and still delivers what it holds (within ``flush_timeout``) before it exits.

The helper is a child of the training process (``notify.delivery.child``) running
``notify.delivery.helper_main``; its log goes nowhere, so the notifier logs each failed outcome when it comes
back.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import notify.delivery.child as child

logger = logging.getLogger(__name__)

ANSWER_MARGIN = 1.0  # seconds past the close deadline to wait for the helper's last outcomes to come back

# (key, channel index, delivery, dropped): one channel's outcome for the event sent under ``key``.
OnOutcome = Callable[[int, int, dict, bool], None]
# (key, the event dict the finisher made or None, its error or None): what the helper sent under ``key``.
OnFinished = Callable[[int, "dict | None", "str | None"], None]


class SendHelper:
    """The training process' side of one helper process; thread-safe."""

    def __init__(self, on_outcome: OnOutcome, on_lost: Callable[[], None], on_finished: OnFinished) -> None:
        self._on_outcome = on_outcome
        self._on_finished = on_finished
        self._on_lost = on_lost
        self._process: subprocess.Popen | None = None
        self._write = threading.Lock()  # one message at a time into the pipe
        self._state = threading.Lock()  # guards _lost and _finished
        self._lost = False
        self._finished = False  # close() has returned: a late end of the helper is no loss
        self._done = threading.Event()  # the helper answered "closed", or is lost

    def start(self, portable_channels: list[tuple[str, list[str]]], settings: dict[str, Any]) -> bool:
        """Start the helper and hand it the channels (it loads apprise's plugins now, not at the first message);
        False when it cannot start."""
        try:
            process = child.start("notify.delivery.helper_main", "serve")
        except Exception as exc:
            logger.debug("notify: no helper process for sending (%s); sends run in this process", exc)
            return False
        self._process = process
        os.set_blocking(process.stdin.fileno(), False)  # a write that would block gives the helper up instead
        threading.Thread(target=self._read_answers, args=(process,), daemon=True, name="notify-helper-reader").start()
        return self._tell(("config", portable_channels, settings))

    @property
    def usable(self) -> bool:
        """Running, and not lost: a send now is the helper's."""
        return self._process is not None and not self._lost

    def prepare(self, finisher: str) -> bool:
        """Have the helper import ``finisher`` now (its imports can take seconds), not at its first send."""
        return self._tell(("prepare", finisher))

    def send(self, key: int, event: Any, attachments: Sequence[str], finish: tuple[str, Any] | None = None) -> bool:
        """Hand the helper ``event`` (to be finished by ``finish``'s finisher first, when given); False when it is
        lost (``on_lost`` has run; the caller sends it itself)."""
        return self._tell(("send", key, event.to_dict(), list(attachments), finish))

    def close(self, deadline: float) -> bool:
        """Have the helper deliver what it holds by ``deadline`` (``time.monotonic``), wait for its last
        outcomes, and stop using it. True when every outcome came back."""
        if self._tell(("close", deadline)):
            self._done.wait(max(0.0, deadline - time.monotonic()) + ANSWER_MARGIN)
        with self._state:
            self._finished = True
            answered = self._done.is_set() and not self._lost
        process, self._process = self._process, None
        if process is not None:
            child.stop(process, wait=0.5, kill=not answered)
        return answered

    def _tell(self, message: tuple) -> bool:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._write:
            process = self._process
            if process is None or self._lost:
                return False
            try:
                written = os.write(process.stdin.fileno(), data)
            except (OSError, ValueError) as exc:  # gone (BrokenPipeError), or full (BlockingIOError)
                reason = f"its pipe failed ({type(exc).__name__})"
            else:
                if written == len(data):
                    return True
                reason = "its pipe is full"  # and holds half a message now: it cannot go on
        self._lose(reason)
        return False

    def _read_answers(self, process: subprocess.Popen) -> None:
        try:
            while True:
                message = pickle.load(process.stdout)
                if message[0] in ("outcome", "finished"):
                    try:
                        (self._on_outcome if message[0] == "outcome" else self._on_finished)(*message[1:])
                    except Exception:  # a bug recording it: the helper itself is fine, keep reading
                        logger.exception("notify: recording an answer from the send helper failed")
                elif message[0] == "closed":
                    self._done.set()
                    return
                else:
                    self._lose(f"it cannot load the channels ({message[1]})")
                    return
        except Exception as exc:  # EOF: the helper exited or was killed; or an answer that does not load
            self._lose(f"it ended ({type(exc).__name__})")

    def _lose(self, reason: str) -> None:
        with self._state:
            if self._lost or self._finished or self._done.is_set():
                return
            self._lost = True
        logger.debug("notify: the send helper is given up: %s; sends run in this process", reason)
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        try:
            self._on_lost()
        finally:
            self._done.set()
