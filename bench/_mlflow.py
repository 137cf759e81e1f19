"""Shared helpers for the MLflow benchmarks: throwaway tracking stores, synthetic runs, timing and headers.

Not a benchmark itself (the leading underscore keeps ``python -m bench`` from running it). Everything
stays on this machine: a ``sqlite:///`` store in a temporary directory, or a real ``mlflow server`` on a
free 127.0.0.1 port with a sqlite backend and ``--serve-artifacts``, started here and killed (with its
worker processes) when the ``with`` block ends, also on an exception or Ctrl-C.
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


@contextlib.contextmanager
def mlflow_server() -> Iterator[tuple[str, None]]:
    """(URI, None) of a real ``mlflow server`` (sqlite backend, --serve-artifacts, one worker) on a free
    127.0.0.1 port; the server and its workers are killed and its directory removed on exit."""
    import requests

    with temp_dir() as root:
        port = free_port()
        with open(root / "server.log", "wb") as log:
            # A session of its own: `mlflow server` starts uvicorn and a job runner as children, and the
            # whole group is ended below.
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
                 "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {process.returncode}: "
                                       + (root / "server.log").read_text(errors="replace")[-2000:])
                try:
                    if requests.get(f"{uri}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start within {SERVER_START_TIMEOUT_S} s")
                time.sleep(0.5)
            yield uri, None
        finally:
            _stop(process)


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
