"""The run's pulse, beside the training loop: a heartbeat tag, and MLflow's system metrics.

``Heartbeat`` is a daemon thread that writes the tag ``peft_studio.heartbeat`` (Unix seconds) every
``heartbeat_seconds``: one small request per interval, never from the training step, so a long evaluation
or checkpoint keeps beating while a process killed with SIGKILL (or the OOM killer, or a lost node) stops.
``peft-studio watch`` (``tracking/watch.py``) fails runs whose heartbeat is too old.

System metrics are MLflow's own ``SystemMetricsMonitor`` (``system/*`` metrics: CPU, memory, disk, network,
GPU where present); the subclass here only reads the memory figure it already collected, with the cgroup
limit a container's OOM killer uses, and calls ``on_memory`` once when it passes ``MEMORY_WARN_PERCENT``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_TAG = "peft_studio.heartbeat"  # Unix seconds of the latest beat
HEARTBEAT_INTERVAL_TAG = "peft_studio.heartbeat_seconds"  # the run's interval: the watcher allows 3 of them
MEMORY_WARN_PERCENT = 90.0


class Heartbeat:
    """Writes ``HEARTBEAT_TAG`` now and then every ``interval`` seconds until ``stop``; a failed write (the
    store is away) is retried at the next beat."""

    def __init__(self, client, run_id: str, interval: float):
        self.client, self.run_id, self.interval = client, run_id, float(interval)
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peft-studio-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        from mlflow.entities import RunTag

        interval_told = False
        while True:
            now = f"{time.time():.1f}"
            tags = [RunTag(HEARTBEAT_TAG, now)] + ([] if interval_told else
                                                   [RunTag(HEARTBEAT_INTERVAL_TAG, f"{self.interval:g}")])
            try:
                self.client.log_batch(self.run_id, tags=tags)  # one request, the interval with the first beat
                interval_told = True
                self.beats += 1
            except Exception as exc:  # the store is away: the next beat tries again
                log.debug("heartbeat not recorded: %s", exc)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """No beat after this returns, unless one is stuck on a store that is away (the thread is a daemon;
        a late beat on an ended run is harmless: the watcher reads RUNNING runs only)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


def memory_limit_percent(used_percent: float | None) -> tuple[float, str] | None:
    """The fuller of the machine's memory (MLflow's figure) and this container's cgroup limit, with words."""
    best: tuple[float, str] | None = None
    if used_percent is not None:
        best = (float(used_percent), "system memory")
    for current, limit in (("memory.current", "memory.max"),  # cgroup v2, then v1
                           ("memory/memory.usage_in_bytes", "memory/memory.limit_in_bytes")):
        try:
            used = int(Path("/sys/fs/cgroup", current).read_text().strip())
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
        except (OSError, ValueError):
            continue
        if cap.isdigit() and 0 < int(cap) < 2**60:
            percent = 100.0 * used / int(cap)
            if best is None or percent > best[0]:
                best = (percent, f"container limit {int(cap) / 2**30:.1f} GiB")
        break
    return best


def _memory_aware_monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class MemoryAwareMonitor(SystemMetricsMonitor):
        """MLflow's monitor; ``publish_metrics`` also checks the memory figure it aggregated."""

        on_memory: Callable[[float, str], None] | None = None

        def publish_metrics(self, metrics):
            try:
                found = memory_limit_percent(metrics.get("system_memory_usage_percentage"))
                if found is not None and found[0] >= MEMORY_WARN_PERCENT and self.on_memory is not None:
                    self.on_memory(*found)
            except Exception as exc:  # a warning must never stop the metrics
                log.debug("memory check failed: %s", exc)
            super().publish_metrics(metrics)

    return MemoryAwareMonitor


class RunGuard:
    """The heartbeat and the system metrics of one run (main process only)."""

    def __init__(self, heartbeat: Heartbeat | None, system_metrics=None):
        self.heartbeat, self.system_metrics = heartbeat, system_metrics

    @classmethod
    def start(cls, client, run_id: str, heartbeat_seconds: float, system_metrics_seconds: float,
              on_memory: Callable[[float, str], None] | None = None) -> RunGuard:
        heartbeat = Heartbeat(client, run_id, heartbeat_seconds).start() if heartbeat_seconds > 0 else None
        monitor = None
        if system_metrics_seconds > 0:
            try:
                monitor = _memory_aware_monitor_class()(run_id, sampling_interval=system_metrics_seconds,
                                                        samples_before_logging=1, resume_logging=True)
                monitor.on_memory = on_memory
                monitor.start()
            except Exception as exc:  # e.g. psutil missing: the run goes on without them
                log.warning("no system metrics for run %s: %s", run_id, exc)
                monitor = None
        return cls(heartbeat, monitor)

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.system_metrics is not None:
            try:
                self.system_metrics.finish()
            except Exception as exc:
                log.debug("system metrics did not stop cleanly: %s", exc)
            self.system_metrics = None
