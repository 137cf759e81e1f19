"""Shared fixtures: a throwaway MLflow tracking store per test, and tiny local models."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/histories.py, tests/receivers.py

from receivers import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite tracking store, set for this process and inherited by subprocesses."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("PEFT_STUDIO_NOTIFY", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A tiny randomly initialised GPT-2 with the built-in model's tokenizer, saved as a local directory."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tracking.model import builtin_model_path

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def stock_classifier():
    """A plain (no LoRA) 2-class classifier on the built-in encoder and 64 tokenized toy examples: what a
    user's own Trainer script would train."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tracking.model import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(builtin_model_path(), num_labels=2)
    texts = [f"{'great' if i % 2 else 'awful'} product number {i}" for i in range(64)]
    encodings = tokenizer(texts, truncation=True, padding=True, max_length=16)
    dataset = [{"input_ids": encodings["input_ids"][i], "attention_mask": encodings["attention_mask"][i],
                "labels": i % 2} for i in range(64)]
    return model, dataset


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the tests
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class MlflowServerProcess:
    """`mlflow server` on 127.0.0.1 with artifacts served through it, which a test may kill and start again
    on the same port and store (a server restart in the middle of a run)."""

    def __init__(self, backend_uri: str, artifacts: Path, port: int | None = None):
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 120) -> str:
        import subprocess
        import time

        import requests

        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_uri, "--serve-artifacts", "--artifacts-destination",
             str(self.artifacts), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self.uri
            except requests.RequestException:
                time.sleep(0.5)
        self.kill()
        pytest.fail(f"mlflow server did not start within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


@contextlib.contextmanager
def _running_mlflow_server(backend_uri: str, artifacts: Path, monkeypatch):
    """A started server; MLFLOW_TRACKING_URI points at it for this process and its subprocesses."""
    import mlflow

    server = MlflowServerProcess(backend_uri, artifacts)
    uri = server.start()
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield server
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        server.stop()


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """A real `mlflow server` with a sqlite backend store."""
    store = tmp_path / "server"
    store.mkdir()
    with _running_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", monkeypatch) as server:
        yield server.uri


@pytest.fixture
def restartable_mlflow_server(tmp_path, monkeypatch):
    """Like ``mlflow_server``, but the test gets the ``MlflowServerProcess`` to kill and start again."""
    store = tmp_path / "server"
    store.mkdir()
    with _running_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", monkeypatch) as server:
        yield server


@pytest.fixture
def postgres_mlflow_server(tmp_path, monkeypatch):
    """A real `mlflow server` whose backend store is a PostgreSQL server started here (Debian's
    postgresql, run as the postgres user, listening on 127.0.0.1 only)."""
    import shutil
    import subprocess

    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = Path(initdb).parent
    import tempfile

    # pytest's tmp_path lies under a root-only folder the postgres user cannot enter: use /tmp directly
    data = Path(tempfile.mkdtemp(prefix="peft-studio-pg-"))
    shutil.chown(data, "postgres", "postgres")
    port = free_port()

    def as_postgres(*args):
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow")
    as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-o",
                f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "postgres", "-c",
                        "CREATE DATABASE mlflow"], check=True, capture_output=True, timeout=60)
        artifacts = tmp_path / "artifacts"
        backend = f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
        with _running_mlflow_server(backend, artifacts, monkeypatch) as server:
            yield server.uri
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(data, ignore_errors=True)


