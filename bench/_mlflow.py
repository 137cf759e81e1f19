"""Shared helpers for the MLflow benchmarks: throwaway tracking stores, synthetic runs, timing and headers.

Not a benchmark itself (the leading underscore keeps ``python -m bench`` from running it). Everything
stays on this machine: a ``sqlite:///`` store in a temporary directory, or a real ``mlflow server`` on a
free 127.0.0.1 port with a sqlite backend and ``--serve-artifacts``, started here and killed (with its
worker processes) when the ``with`` block ends, also on an exception or Ctrl-C. ``MlflowServer`` is the
one starter of ``mlflow server`` for the benchmarks and the tests (tests/conftest.py imports it).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BATCH = 1000  # MlflowClient.log_batch takes at most 1000 metrics per call
SERVER_START_TIMEOUT_S = 120


# --- headers and timing --------------------------------------------------------------------------------


def print_header(extra: str = "") -> None:
    """The first lines of every benchmark: date, machine, versions."""
    import matplotlib
    import mlflow
    import pandas as pd

    now = datetime.datetime.now().astimezone()
    print(f"date: {now:%Y-%m-%d %H:%M %Z}   machine: os.cpu_count()={os.cpu_count()}  {platform.machine()}  "
          f"{platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}  mlflow {mlflow.__version__}  numpy {np.__version__}  "
          f"pandas {pd.__version__}  matplotlib {matplotlib.__version__}" + (f"  {extra}" if extra else ""))


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print("| " + " | ".join(f"{h:<{w}}" for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(f"{c!s:<{w}}" for c, w in zip(row, widths)) + " |")


# --- stores ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def temp_dir(prefix: str = "peft-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sqlite_store() -> Iterator[tuple[str, Path]]:
    """(tracking URI, directory for artifacts) of a fresh sqlite store in a temporary directory.

    Create experiments with ``create_experiment(name, artifact_location=artifact_uri(dir))``: a sqlite
    store otherwise puts artifacts under ./mlruns of the current directory.
    """
    with temp_dir() as root:
        artifacts = root / "artifacts"
        artifacts.mkdir()
        yield f"sqlite:///{root / 'mlflow.db'}", artifacts


def artifact_uri(directory: Path | None) -> str | None:
    return directory.as_uri() if directory is not None else None


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with artifacts served through it (``--serve-artifacts``, one worker): the
    one place the benchmarks and the tests (tests/conftest.py) start a tracking server.

    It runs in a process group of its own (``mlflow server`` starts uvicorn and a job runner as children), so
    ``kill()`` (SIGKILL: a crash) and ``stop()`` (TERM, then KILL) end all of it. ``start()`` may be called
    again after ``kill()``: the same port and store, a server restarted in the middle of a run. Telemetry is
    off; its output goes to ``log`` (appended across restarts), whose tail is in the error when it does not
    start. Also a context manager: started on enter, stopped on exit.
    """

    def __init__(self, backend_uri: str, artifacts: Path, port: int | None = None, log: Path | None = None):
        self.backend_uri = backend_uri
        self.artifacts = Path(artifacts)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log is not None else self.artifacts.parent / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> str:
        """Start the server and wait until /health answers; returns its URI. Raises RuntimeError (with the
        end of the server's log) when it exits or does not answer within ``timeout`` seconds."""
        import requests

        self.log.parent.mkdir(parents=True, exist_ok=True)
        # Without MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false the server also starts a huey job runner (8 more
        # processes, for MLflow's GenAI jobs, unused here): 15 s of CPU per start instead of 5 (2026-12-03).
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", self.backend_uri, "--serve-artifacts", "--artifacts-destination",
                 str(self.artifacts), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self._log_tail()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self.uri
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mlflow server did not start within {timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        if self.process is not None:  # the group may outlive its leader for a moment (uvicorn's worker)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """End the server's process group: TERM, then KILL."""
        if self.process is not None:
            _stop(self.process)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def mlflow_server() -> Iterator[tuple[str, None]]:
    """(URI, None) of a real ``mlflow server`` (sqlite backend, --serve-artifacts, one worker) on a free
    127.0.0.1 port; the server and its workers are killed and its directory removed on exit."""
    with temp_dir() as root, MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts") as server:
        yield server.uri, None


def _stop(process: subprocess.Popen) -> None:
    """End the server's process group (the process we started and its children): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            # The group may outlive its leader for a moment (uvicorn's worker); KILL whatever is left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def store(kind: str) -> Iterator[tuple[str, Path | None]]:
    """``store("sqlite")`` or ``store("server")``: (tracking URI, artifact directory or None)."""
    if kind == "sqlite":
        with sqlite_store() as found:
            yield found
    elif kind == "server":
        with mlflow_server() as found:
            yield found
    else:
        raise ValueError(f"unknown store {kind!r}")


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines (alembic migrations, 'Creating experiment') and its '🏃 View run ... at' lines
    (printed for a server when a run ends) and download progress bars kept out of the output."""
    import logging

    names = ("mlflow", "alembic")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    env = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- synthetic runs ----------------------------------------------------------------------------------


def synthetic_history(steps: int, seed: int = 0, eval_every: int = 100, spikes: int = 4,
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A realistic fine-tuning history, seeded: {key: (steps, values)} for loss, grad_norm, learning_rate
    (every step) and eval_loss (every ``eval_every`` steps).

    Loss: exponential decay to a floor with 3% multiplicative noise and ``spikes`` isolated spikes (x4);
    grad_norm: a slow decay with 5% noise and the same number of spikes (x6); learning_rate: linear
    warm-up over the first 2% of the steps, then linear decay to 0; eval_loss: the noiseless curve + 0.05.
    """
    rng = np.random.default_rng(seed)
    step = np.arange(1, steps + 1)
    t = step / steps
    smooth = 0.35 + 1.8 * np.exp(-8.0 * t)
    loss = smooth * (1 + 0.03 * rng.standard_normal(steps))
    grad = (0.6 + 0.8 * np.exp(-4.0 * t)) * (1 + 0.05 * rng.standard_normal(steps))
    if spikes:
        # well inside the run and apart, so each is an isolated spike after the trailing window
        at = np.sort(rng.choice(np.arange(steps // 10, steps - 10, max(1, steps // 50)), spikes, replace=False))
        loss[at] *= 4.0
        grad[at + 3] *= 6.0
    warmup = max(1, steps // 50)
    lr = np.where(step <= warmup, 2e-4 * step / warmup, 2e-4 * (steps - step) / max(1, steps - warmup))
    eval_steps = step[eval_every - 1 :: eval_every]
    eval_loss = smooth[eval_steps - 1] + 0.05
    return {"loss": (step, loss), "grad_norm": (step, grad), "learning_rate": (step, lr),
            "eval_loss": (eval_steps, eval_loss)}


def log_history(client, run_id: str, history: dict[str, tuple[np.ndarray, np.ndarray]],
                batch: int = BATCH) -> int:
    """Log every point with ``log_batch`` calls of ``batch`` metrics (timestamps rise with the step).
    Returns the number of calls."""
    from mlflow.entities import Metric

    base = int(time.time() * 1000)
    metrics = [Metric(key, float(v), base + int(s), int(s))
               for key, (steps, values) in history.items() for s, v in zip(steps.tolist(), values.tolist())]
    calls = 0
    for start in range(0, len(metrics), batch):
        client.log_batch(run_id, metrics=metrics[start : start + batch])
        calls += 1
    return calls


def fetch_sequentially(client, run_id: str, keys) -> int:
    """The baseline: ``get_metric_history`` one key after another; returns the number of points."""
    return sum(len(client.get_metric_history(run_id, key)) for key in keys)
