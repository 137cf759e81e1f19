"""Shared fixtures: a throwaway MLflow tracking store per test, tiny local models, `mlflow server`s, and one
trained run of the job that several tests read.

Under pytest-xdist (``-n auto``) each worker is a process with a session of its own; torch and BLAS get
``cores // workers`` threads each there, so that two workers training at once do not fight over the cores.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # before numpy or torch is imported, here or in subprocesses
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/histories.py, tests/receivers.py

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/_mlflow.py

from receivers import free_port  # noqa: E402

from bench._mlflow import MlflowServer  # noqa: E402


@functools.cache
def _empty_store_template() -> Path:
    """An empty sqlite tracking store, its tables created once per test process: MLflow creates and migrates
    the tables of a new store in 0.6-0.9 s of CPU (1 s more in a subprocess), a copy of this file opens in
    0.02 s, and a new store and the copy hold the same (only the Default experiment)."""
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="peft-studio-store-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    template = Path(folder) / "empty.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    return template


def new_sqlite_store(path: Path) -> str:
    """A new, empty sqlite tracking store at ``path`` (a copy of the template); returns its URI."""
    shutil.copyfile(_empty_store_template(), path)
    return f"sqlite:///{path}"


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite tracking store, set for this process and inherited by subprocesses."""
    import mlflow

    uri = new_sqlite_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("PEFT_STUDIO_NOTIFY", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def _forget_the_active_experiment() -> None:
    """``mlflow.set_experiment`` leaves its experiment active in the process (a module global and the
    MLFLOW_EXPERIMENT_ID variable, which subprocesses inherit): a later test's run would go to that
    experiment id in its own store, where it may not exist."""
    import mlflow.tracking.fluent

    if hasattr(mlflow.tracking.fluent, "_active_experiment_id"):
        mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(autouse=True)
def _no_experiment_left_active():
    """Every test starts without an experiment a test or fixture before it made active."""
    yield
    if "mlflow" in sys.modules:
        _forget_the_active_experiment()


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


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the cores. Many slow tests spend part of their time waiting (on a job
    subprocess, a server's start, a webhook), so a third worker on 2 cores keeps both busy: 5 min 22 s for the
    suite against 5 min 47 s with two (2026-12-03). PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return (os.cpu_count() or 1) + 1


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the tests
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Slow tests first (in their file order): under xdist the long ones then start early and the quick ones
    fill the end, instead of one worker finishing a long test alone. The order is the same in every worker,
    as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --- one trained run, read by several tests --------------------------------------------------------------

DEFAULT_RUN_STEPS = 8
DEFAULT_RUN_EVAL_STEPS = 4


@dataclass
class TrainedRun:
    """What the shared job left: its result, its store, the messages its channels got, and how many times
    the end of the job read a history back from MLflow."""

    uri: str
    root: Path
    result: object
    posts: list[dict] = field(default_factory=list)
    mails: list = field(default_factory=list)
    history_reads: list = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.result.run_id

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> TrainedRun:
    """The training job on the built-in model and data (8 steps, a loss point per step, an evaluation every 4,
    batches of 8), in process, into a sqlite store of its own, experiment "notify", notifying a JSON webhook
    (every event) and an SMTP server (completion and errors only, from an apprise YAML file with receivers.PASSWORD).

    Trained once per test process; the tests that use it only read it (mark them
    ``pytest.mark.xdist_group("default-run")`` so that xdist runs them in one process). A test that changes
    a run trains its own."""
    import mlflow
    from receivers import PASSWORD, HTTPReceiver, SMTPReceiver

    import tracking.analyze
    from notify.delivery import Notifier, load_channels
    from tracking.config import TrainConfig
    from tracking.train import run_training

    root = tmp_path_factory.mktemp("default-run")
    uri = new_sqlite_store(root / "mlflow.db")
    reads: list = []
    original_read = tracking.analyze.read_history
    with pytest.MonkeyPatch.context() as mp, HTTPReceiver() as webhook, SMTPReceiver() as smtp:
        for name in _RUN_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(tracking.analyze, "read_history", lambda *a: reads.append(a) or original_read(*a))
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("notify")
        config_file = root / "notify.yaml"
        mail = smtp.url("trainer", PASSWORD, "me@example.com", "bot@example.com")
        config_file.write_text(f"urls:\n  - {webhook.url()}\n  - \"{mail}\":\n      tag: completion, error\n")
        config = TrainConfig(max_steps=DEFAULT_RUN_STEPS, logging_steps=1, eval_steps=DEFAULT_RUN_EVAL_STEPS,
                             batch_size=8, output_dir=str(root / "out"), notify=str(config_file))
        channels = load_channels(config.notify)
        try:
            result = run_training(config, notifier=Notifier(channels), channel_count=len(channels))
            posts = [p["json"] for p in webhook.wait_for(5, timeout=20)]
            mails = smtp.wait_for(1, timeout=20)
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            _forget_the_active_experiment()
    return TrainedRun(uri=uri, root=root, result=result, posts=posts, mails=mails, history_reads=reads)


_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY")


# The README's quick start, `mlflow run . --env-manager local`, shortened: run once per test process for the
# README test (it prints the summary) and tests/test_tracking_job.py (what the run holds in MLflow).
QUICK_START_SETTINGS = {"max_steps": 8, "logging_steps": 1, "eval_steps": 4}


@dataclass
class QuickStartRun:
    """What ``mlflow run . --env-manager local -P output_dir=... -P max_steps=8 ...`` left: its output and
    its own sqlite store."""

    uri: str
    root: Path
    done: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def quick_start_run(tmp_path_factory) -> QuickStartRun:
    """The quick start job as a subprocess in a folder of its own (mark readers
    ``pytest.mark.xdist_group("quick-start")``); a failed job fails every reader with its stderr."""
    root = tmp_path_factory.mktemp("quick-start")
    uri = new_sqlite_store(root / "mlflow.db")
    env = {key: value for key, value in os.environ.items() if key not in _RUN_ENV}
    env.update(MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1")
    settings = {"output_dir": root / "outputs", **QUICK_START_SETTINGS}
    argv = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
            *(arg for key, value in settings.items() for arg in ("-P", f"{key}={value}"))]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return QuickStartRun(uri=uri, root=root, done=done)


@contextlib.contextmanager
def _pointed_at(uri: str, monkeypatch):
    """MLFLOW_TRACKING_URI set to ``uri`` for this process and its subprocesses; runs left open are ended."""
    import mlflow

    for name in _RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()


@contextlib.contextmanager
def _running_mlflow_server(backend_uri: str, artifacts: Path, monkeypatch):
    """A started server of this test's own (``bench._mlflow.MlflowServer``, the one starter of servers for
    the tests and the benchmarks); MLFLOW_TRACKING_URI points at it."""
    server = MlflowServer(backend_uri, artifacts)
    server.start()
    try:
        with _pointed_at(server.uri, monkeypatch):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _session_mlflow_server(tmp_path_factory):
    """One `mlflow server` (sqlite backend) per test process, started when a test first asks for it."""
    store = tmp_path_factory.mktemp("session-server")
    server = MlflowServer(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts")
    server.start()
    yield server
    server.stop()


def _forget_what_the_test_made(uri: str, experiments_before: set[str]) -> None:
    """Leave the shared server as a fresh one looks: the test's experiments renamed out of the way and
    deleted (so a later test may create one of the same name), the runs of the default experiment deleted."""
    import uuid

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for experiment in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if experiment.experiment_id == "0":
            for run in client.search_runs(["0"], max_results=50_000):
                client.delete_run(run.info.run_id)
        elif experiment.experiment_id not in experiments_before:
            client.rename_experiment(experiment.experiment_id, f"{experiment.name} (done {uuid.uuid4().hex})")
            client.delete_experiment(experiment.experiment_id)


@pytest.fixture
def mlflow_server(_session_mlflow_server, monkeypatch):
    """A real `mlflow server` with a sqlite backend store, for tests that only need a server: one per test
    process, shared, and looking fresh to each test (no experiment but the default one, no run). A test
    that kills or restarts its server uses ``restartable_mlflow_server``."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    server = _session_mlflow_server
    if server.process is None or server.process.poll() is not None:
        server.start()  # a test before this one brought it down
    before = {e.experiment_id for e in MlflowClient(server.uri).search_experiments(view_type=ViewType.ALL)}
    with _pointed_at(server.uri, monkeypatch) as uri:
        yield uri
    _forget_what_the_test_made(server.uri, before)


@pytest.fixture
def restartable_mlflow_server(tmp_path, monkeypatch):
    """A server of this test's own: the test gets the ``MlflowServer`` to kill and start again."""
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


