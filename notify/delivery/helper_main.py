"""What runs in the send helper process (see ``notify.delivery.helper`` for why and for the messages): a plain
in-process ``Notifier`` on the channels the training process handed over, answering each outcome, and the
finishers that complete an event before it is sent (the training job's provisional score)."""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import notify.delivery.child as child
from notify.delivery.channels import Channels
from notify.delivery.worker import Notifier
from notify.events import NotificationEvent


def serve() -> None:
    """The helper process: a plain ``Notifier`` that sends what the pipe brings and answers each outcome. It
    skips the interpreter's teardown when done (everything is delivered and answered by then): with the
    scoring code loaded, the teardown took 0.15 s that the training process' ``close`` waited for."""
    requests, answers = child.serve_pipes()
    try:
        _serve(requests, answers)
    finally:
        os._exit(0)


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    write = threading.Lock()

    def answer(*message: Any) -> None:
        with write:
            try:
                pickle.dump(message, answers, protocol=pickle.HIGHEST_PROTOCOL)
                answers.flush()
            except (OSError, ValueError):  # the training process is gone: deliver what is here all the same
                pass

    try:
        _, portable_channels, settings = pickle.load(requests)
        notifier = Notifier(Channels.from_portable(portable_channels), **settings)
    except Exception as exc:  # the training process sends in-process instead
        answer("unusable", type(exc).__name__)
        return

    def outcome_of(key: int) -> Callable[[int, dict, bool], None]:
        return lambda index, delivery, dropped: answer("outcome", key, index, delivery, dropped)

    finishers: dict[str, tuple[Callable, dict]] = {}  # "module:function" -> (function, its state)
    loaded = threading.Lock()  # guards finishers: "prepare" loads one on a thread of its own

    def finisher(target: str) -> tuple[Callable, dict]:
        with loaded:
            if target in finishers:
                return finishers[target]
        module, _, name = target.partition(":")
        function = getattr(importlib.import_module(module), name)  # waits for an import under way elsewhere
        with loaded:
            return finishers.setdefault(target, (function, {}))

    def prepare(target: str) -> None:
        try:
            finisher(target)
        except Exception:  # said again, with the reason, by the first send that needs it
            pass

    def finished(key: int, event: dict, finish: tuple[str, Any] | None) -> NotificationEvent:
        """The event ``finish``'s finisher makes of ``event``; ``event`` itself when it fails."""
        if finish is not None:
            try:
                function, state = finisher(finish[0])
                made = function(state, event, finish[1])
                finished_event = NotificationEvent.from_dict(made)  # refused here when it is not an event
            except Exception as exc:
                answer("finished", key, None, f"{finish[0]}: {type(exc).__name__}: {exc}")
            else:
                if made != event:
                    answer("finished", key, made, None)
                return finished_event
        return NotificationEvent.from_dict(event)

    while True:
        try:
            message = pickle.load(requests)
        except Exception:  # EOF: the training process is gone; deliver what is here, as its exit would
            notifier.close()
            return
        if message[0] == "send":
            _, key, event, attachments, finish = message
            notifier.send(finished(key, event, finish), attachments, on_outcome=outcome_of(key))
        elif message[0] == "prepare":  # its imports can take seconds: sends go on meanwhile
            threading.Thread(target=prepare, args=(message[1],), daemon=True, name="prepare-finisher").start()
        elif message[0] == "close":
            notifier.close(max(0.0, message[1] - time.monotonic()))
            answer("closed")
            return
