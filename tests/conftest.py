"""Shared fixtures: a throwaway MLflow tracking store per test, and tiny local models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/histories.py, tests/receivers.py

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


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts served through the server), with
    MLFLOW_TRACKING_URI pointing at it for this process and its subprocesses."""
    import socket
    import subprocess
    import time

    import mlflow
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start within 120 s")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
