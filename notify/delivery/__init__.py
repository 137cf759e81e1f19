"""Delivery: the I/O side of notifications (apprise channels, the delivery worker, the stall watchdog).

``notify`` itself decides *what* to say and *when* (pure); this package says it: ``channels`` loads and
routes apprise services, ``messages`` fits one event to one service, ``redact`` keeps secrets out of
everything shown, ``worker`` sends off the training thread
(``helper`` and ``helper_main``: from a process of its own), and ``watchdog`` notices steps that stop.
"""

from notify.delivery.channels import ENV_VAR, ChannelError, Channels, load_channels
from notify.delivery.messages import fit_message
from notify.delivery.redact import RedactSecrets
from notify.delivery.watchdog import StallWatchdog
from notify.delivery.worker import Notifier, test_channels

__all__ = [
    "ENV_VAR",
    "ChannelError",
    "Channels",
    "Notifier",
    "RedactSecrets",
    "StallWatchdog",
    "fit_message",
    "load_channels",
    "test_channels",
]
