"""What runs in the send helper process (see ``notify.delivery.helper`` for why and for the messages): a plain
in-process ``Notifier`` on the channels the training process handed over, answering each outcome."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import notify.delivery.child as child
from notify.delivery.channels import Channels
from notify.delivery.worker import Notifier
from notify.events import NotificationEvent


def serve() -> None:
    """The helper process: a plain ``Notifier`` that sends what the pipe brings and answers each outcome."""
    requests, answers = child.serve_pipes()
    write = threading.Lock()

    def answer(*message: Any) -> None:
        with write:
            pickle.dump(message, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()

    try:
        _, portable_channels, settings = pickle.load(requests)
        notifier = Notifier(Channels.from_portable(portable_channels), **settings)
    except Exception as exc:  # the training process sends in-process instead
        answer("unusable", type(exc).__name__)
        return

    def outcome_of(key: int) -> Callable[[int, dict, bool], None]:
        return lambda index, delivery, dropped: answer("outcome", key, index, delivery, dropped)

    while True:
        try:
            message = pickle.load(requests)
        except Exception:  # EOF: the training process is gone; deliver what is here, as its exit would
            notifier.close()
            return
        if message[0] == "send":
            _, key, event, attachments = message
            notifier.send(NotificationEvent.from_dict(event), attachments, on_outcome=outcome_of(key))
        elif message[0] == "close":
            notifier.close(max(0.0, message[1] - time.monotonic()))
            answer("closed")
            return
