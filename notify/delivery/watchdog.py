"""A stall watchdog: a daemon thread beside the training loop that speaks up when steps stop coming.

The loop calls ``beat(step)`` after every step (and, if it evaluates or saves for long, during those too);
when no beat arrives for ``timeout_seconds`` the watchdog calls ``on_stall(seconds_since_last_beat,
last_step)`` once, and never again for this run. What to send is the callback's business (typically
``TrainingWatch.record_stall`` and a notifier); this module does no I/O of its own.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 900.0  # 15 minutes without a step
MAX_POLL_SECONDS = 5.0  # a stall is noticed at most this late; stop() never waits on it
STOP_JOIN_SECONDS = 2.0  # stop() waits at most this long for a callback still running


class StallWatchdog:
    """Calls ``on_stall`` once when ``beat`` has not been called for ``timeout_seconds``.

    The clock starts at ``start()`` (or at an earlier beat). ``clock`` is injectable for tests; the thread
    sleeps with ``threading.Event.wait(poll_seconds)``, so ``stop()`` ends it at once. Exceptions raised by
    ``on_stall`` are logged and swallowed: a failed warning must never end the training run.
    """

    def __init__(
        self,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        on_stall: Callable[[float, int | None], None],
        clock: Callable[[], float] = time.monotonic,
        poll_seconds: float | None = None,
    ) -> None:
        self.timeout_seconds = _positive("timeout_seconds", timeout_seconds)
        if not callable(on_stall):
            raise ValueError(f"on_stall must be callable as on_stall(seconds, last_step), got {on_stall!r}")
        if not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds, such as time.monotonic, got {clock!r}")
        if poll_seconds is None:
            poll_seconds = min(self.timeout_seconds / 4, MAX_POLL_SECONDS)
        self.poll_seconds = _positive("poll_seconds", poll_seconds)
        self._on_stall = on_stall
        self._clock = clock
        self._last: tuple[float, int | None] | None = None  # (time, step), replaced whole: atomic, no lock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._fired = False

    @property
    def fired(self) -> bool:
        """Whether ``on_stall`` has been called (it never is again)."""
        return self._fired

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> StallWatchdog:
        """Starts watching; the first timeout counts from now unless a beat came earlier."""
        if self._thread is not None:
            raise RuntimeError("this StallWatchdog was already started; create a new one for a new run")
        if self._last is None:
            self._last = (self._clock(), None)
        self._thread = threading.Thread(target=self._run, name="peft-studio-stall-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int | None = None) -> None:
        """Training made progress (at ``step``). O(1): one clock read and one assignment, no lock, no I/O."""
        self._last = (self._clock(), step)

    def stop(self) -> None:
        """Stops watching and joins the thread; safe to call more than once. Before ``start`` it does nothing."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if thread is not threading.current_thread():
            thread.join(STOP_JOIN_SECONDS)

    def __enter__(self) -> StallWatchdog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            last_time, last_step = self._last
            idle = self._clock() - last_time
            if idle >= self.timeout_seconds:
                self._fire(idle, last_step)
                return  # once per run: nothing left to watch for

    def _fire(self, idle: float, last_step: int | None) -> None:
        self._fired = True
        try:
            self._on_stall(idle, last_step)
        except Exception:
            logger.exception("the stall callback failed after %.0f s without a training step; ignored", idle)


def _positive(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a finite number of seconds > 0, got {value!r}")
    return float(value)
