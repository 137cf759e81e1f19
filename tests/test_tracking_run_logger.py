"""The batched metrics path (tracking/run_logger.py): nothing lost, nothing reordered, retried while the
store fails, kept in a file (and uploadable) when it never comes back, flushed on exit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from receivers import free_port

import tracking.run_logger
from tracking.run_logger import RunLogger, read_unsent, upload_unsent

REPO = Path(__file__).resolve().parent.parent


def _new_run() -> str:
    """A run in this test's store (the default experiment: an active experiment set by an earlier test may
    belong to another store)."""
    return MlflowClient().create_run("0").info.run_id


def _history(client, run_id, key):
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def _log_points(logger, steps, keys=("loss", "grad_norm", "learning_rate")):
    """What a training loop logs: per step one value per key, each step with its own timestamp."""
    logged = {key: [] for key in keys}
    for step in steps:
        ts = 1_700_000_000_000 + step
        values = {key: step * 0.001 + i for i, key in enumerate(keys)}
        logger.log_metrics(values, step, timestamp_ms=ts)
        for key, value in values.items():
            logged[key].append((step, value, ts))
    return logged


class CountingClient:
    """The real client, counting requests; optionally failing the first ``fail_first`` of them the way a
    locked sqlite store answers."""

    def __init__(self, fail_first: int = 0):
        self.client = MlflowClient()
        self.calls = 0
        self.fail_first = fail_first

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)


def test_every_point_arrives_in_order_in_batches_of_up_to_1000(tracking_uri, tmp_path):
    run_id = _new_run()
    counting = CountingClient()
    logger = RunLogger(counting, run_id, unsent_path=tmp_path / "unsent.jsonl", flush_interval=0.05)
    logged = _log_points(logger, range(1, 3001))
    logger.set_tag("peft_studio.milestones_sent", "25,50")
    report = logger.close()
    assert report.complete and report.sent == 9001 and report.unsent_path is None
    client = MlflowClient()
    for key, points in logged.items():
        assert _history(client, run_id, key) == points
    assert client.get_run(run_id).data.tags["peft_studio.milestones_sent"] == "25,50"
    assert counting.calls <= 9001 // 1000 + 10  # batched, not one request per step
    assert not (tmp_path / "unsent.jsonl").exists()


def test_flush_waits_for_what_was_logged_before_it(tracking_uri, tmp_path):
    run_id = _new_run()
    logger = RunLogger(MlflowClient(), run_id, unsent_path=tmp_path / "u.jsonl", flush_interval=60)
    logged = _log_points(logger, range(1, 51), keys=("loss",))
    assert logger.flush(timeout=30)
    assert _history(MlflowClient(), run_id, "loss") == logged["loss"]
    logger.close()


@pytest.mark.slow
def test_a_failing_store_is_retried_in_order_and_reported_once(tracking_uri, tmp_path):
    run_id = _new_run()
    troubles = []
    logger = RunLogger(CountingClient(fail_first=3), run_id, unsent_path=tmp_path / "u.jsonl", flush_interval=0.05,
                       retry_delays=(0.05,), on_trouble=troubles.append)
    logged = _log_points(logger, range(1, 2501))
    report = logger.close()
    assert report.complete and logger.failures == 3
    assert troubles == ["MlflowException: (sqlite3.OperationalError) database is locked"]
    for key, points in logged.items():
        assert _history(MlflowClient(), run_id, key) == points


def _unreachable_client():
    return MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")


@pytest.mark.slow
def test_points_a_store_never_takes_are_kept_in_a_file_that_uploads_them_later(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = _new_run()
    path = tmp_path / "unsent.jsonl"
    logger = RunLogger(_unreachable_client(), run_id, unsent_path=path, flush_interval=0.05, retry_delays=(0.2,))
    logged = _log_points(logger, range(1, 1201))
    logger.set_tag("peft_studio.milestones_sent", "25")
    assert not logger.flush(timeout=30, patience=1.0)  # gives up early: the store keeps failing
    report = logger.close(timeout=0.5, status="FINISHED")
    assert not report.complete and report.unsent == 3601 and report.unsent_path == path
    assert "ConnectionError" in report.last_error or "Connection" in report.last_error

    kept_run, metrics, tags, status = read_unsent(path)
    assert (kept_run, len(metrics), status) == (run_id, 3600, "FINISHED")
    assert MlflowClient().get_metric_history(run_id, "loss") == []
    result = upload_unsent(MlflowClient(), path)
    upload_unsent(MlflowClient(), path)  # repeating is harmless
    assert (result.metrics, result.tags) == (3600, 1)
    for key, points in logged.items():
        assert _history(MlflowClient(), run_id, key) == points
    assert MlflowClient().get_run(run_id).data.tags["peft_studio.milestones_sent"] == "25"


@pytest.mark.slow
def test_the_buffer_is_bounded_while_the_store_is_away(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = _new_run()
    path = tmp_path / "unsent.jsonl"
    logger = RunLogger(_unreachable_client(), run_id, unsent_path=path, flush_interval=0.01, max_buffered=2000,
                       retry_delays=(0.05,))
    for chunk in range(10):
        _log_points(logger, range(chunk * 500 + 1, chunk * 500 + 501))
        time.sleep(0.3)
        assert len(logger._queue) <= 2000 + 1500  # at most one chunk above the bound before the next retry
    assert path.exists()
    report = logger.close(timeout=0.0)
    assert report.unsent == 15000
    _, metrics, _, _ = read_unsent(path)
    steps = [m.step for m in metrics if m.key == "loss"]
    assert sorted(steps) == list(range(1, 5001))


@pytest.mark.slow
def test_when_the_store_comes_back_the_overflow_file_is_sent_too(tracking_uri, tmp_path):
    run_id = _new_run()
    path = tmp_path / "unsent.jsonl"
    logger = RunLogger(CountingClient(fail_first=2), run_id, unsent_path=path, flush_interval=0.01,
                       max_buffered=500, retry_delays=(0.3,))
    logged = _log_points(logger, range(1, 1001))  # 3000 points: more than the bound while the store fails
    report = logger.close()
    assert report.complete and not path.exists()
    for key, points in logged.items():
        assert sorted(_history(MlflowClient(), run_id, key)) == points


class AwayClient(CountingClient):
    """The real client, failing while ``away`` is set: a store that is down, then back."""

    def __init__(self):
        super().__init__()
        self.away = True

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.away:
            self.calls += 1
            raise MlflowException("(sqlite3.OperationalError) unable to open database file")
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags)


def _stored(run_id, keys) -> int:
    return sum(len(MlflowClient().get_metric_history(run_id, key)) for key in keys)


def test_a_file_that_cannot_be_written_does_not_end_the_thread_and_the_loss_is_counted(tracking_uri, tmp_path,
                                                                                        caplog):
    """The unsent file's folder cannot be created (its parent is a regular file): the overflow is lost, said
    once, counted exactly; the thread goes on and sends the next points once the store is back."""
    caplog.set_level(logging.WARNING, logger="tracking.run_logger")
    run_id = _new_run()
    (tmp_path / "blocker").write_text("a regular file where the unsent file's folder should be")
    path = tmp_path / "blocker" / "kept" / "unsent.jsonl"  # mkdir: NotADirectoryError
    store, troubles = AwayClient(), []
    logger = RunLogger(store, run_id, unsent_path=path, flush_interval=0.01, max_buffered=1000,
                       retry_delays=(0.05,), on_trouble=troubles.append)
    logged = _log_points(logger, range(1, 1001))  # 3,000 points while the store is away: more than the bound
    deadline = time.monotonic() + 30
    while logger._thread.is_alive() and not getattr(logger, "lost", 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert logger._thread.is_alive()
    assert 0 < logger.lost <= 3000 - 1000  # what overflowed the bound; the bound stays in memory

    store.away = False
    following = _log_points(logger, range(1001, 1101), keys=("loss",))["loss"]  # the next 100 points
    assert not logger.flush(timeout=30)  # settled, but not everything is in the run
    history = _history(MlflowClient(), run_id, "loss")
    assert all(point in history for point in following)

    report = logger.close()
    assert report.lost == 3000 + 100 - _stored(run_id, logged) and report.lost > 0
    assert report.unsent == 0 and report.unsent_path is None and not report.complete
    assert report.sent + report.lost == 3100
    said = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot be kept" in r.getMessage()]
    assert len(said) == 1 and "unsent.jsonl" in said[0].getMessage()
    assert len([t for t in troubles if "cannot be kept" in t]) == 1


def test_close_counts_the_points_it_can_neither_send_nor_keep(tracking_uri, tmp_path):
    run_id = _new_run()
    (tmp_path / "blocker").write_text("not a folder")
    logger = RunLogger(AwayClient(), run_id, unsent_path=tmp_path / "blocker" / "unsent.jsonl", flush_interval=0.01,
                       retry_delays=(0.05,))
    _log_points(logger, range(1, 101))
    logger.set_tag("peft_studio.milestones_sent", "25")
    report = logger.close(timeout=0.0, status="FINISHED")  # no exception
    assert (report.sent, report.unsent, report.lost, report.complete) == (0, 0, 301, False)


def test_the_thread_survives_an_unexpected_exception(tracking_uri, tmp_path, caplog):
    class BuggyOnce(RunLogger):
        failed = False

        def _send(self, batch):
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug outside the store call")
            return super()._send(batch)

    run_id = _new_run()
    logger = BuggyOnce(MlflowClient(), run_id, unsent_path=tmp_path / "u.jsonl", flush_interval=0.01)
    logged = _log_points(logger, range(1, 501))
    assert logger.flush(timeout=30)
    assert logger._thread.is_alive()
    report = logger.close()
    assert report.complete and report.sent == 1500
    for key, points in logged.items():
        assert _history(MlflowClient(), run_id, key) == points
    assert any("a bug outside the store call" in r.getMessage() or (r.exc_info and "a bug" in str(r.exc_info[1]))
               for r in caplog.records if r.levelno == logging.WARNING)


def test_points_kept_while_the_file_uploads_are_not_deleted_with_it(tracking_uri, tmp_path, monkeypatch):
    """close() keeps what is left in the file while the thread uploads what overflowed to it earlier: the
    upload step is held between reading the file and deleting it, and close() appends meanwhile."""
    run_id = _new_run()
    path = tmp_path / "unsent.jsonl"
    store = AwayClient()
    logger = RunLogger(store, run_id, unsent_path=path, flush_interval=0.01, max_buffered=500, retry_delays=(0.05,))
    logged = _log_points(logger, range(1, 1001))  # 3,000 points: the overflow goes to the file
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists()

    uploaded, release = threading.Event(), threading.Event()
    real_upload = tracking.run_logger.upload_unsent

    def upload_then_hold(client, kept):
        result = real_upload(client, kept)  # read and sent ...
        uploaded.set()
        release.wait(30)  # ... and not yet deleted
        return result

    monkeypatch.setattr(tracking.run_logger, "upload_unsent", upload_then_hold)
    store.away = False
    assert uploaded.wait(30)
    later = _log_points(logger, range(1001, 1101))  # the thread is busy: these wait in memory
    report = logger.close(timeout=0.0, status="FINISHED")  # keeps them in the file meanwhile
    release.set()
    logger._thread.join(30)
    assert not logger._thread.is_alive()

    assert report.sent + report.unsent == 3300 and report.unsent_path == path
    assert path.exists() and not list(tmp_path.glob("unsent.jsonl.*"))
    real_upload(MlflowClient(), path)
    for key in logged:
        assert sorted(_history(MlflowClient(), run_id, key)) == logged[key] + later[key]  # each point once


def test_a_rotated_file_left_by_a_crash_is_uploaded_when_the_store_is_back(tracking_uri, tmp_path):
    run_id = _new_run()
    path = tmp_path / "unsent.jsonl"
    left = path.with_name(path.name + ".sending")
    records = [{"run_id": run_id}] + [{"metric": ["loss", 1.0 / step, 1_600_000_000_000 + step, step]}
                                      for step in range(1, 11)]
    left.write_text("".join(json.dumps(r) + "\n" for r in records))
    logger = RunLogger(CountingClient(fail_first=1), run_id, unsent_path=path, flush_interval=0.01,
                       retry_delays=(0.05,))
    _log_points(logger, range(11, 21), keys=("loss",))
    report = logger.close()
    assert report.complete
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "loss")] == list(range(1, 21))
    assert not left.exists() and not path.exists()


def _run_script(body: str, tracking_uri: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": tracking_uri})


@pytest.mark.slow
def test_points_are_flushed_when_the_program_dies_of_an_exception(tracking_uri, tmp_path):
    run_id = _new_run()
    done = _run_script(f"""
        from mlflow.tracking import MlflowClient
        from tracking.run_logger import RunLogger
        logger = RunLogger(MlflowClient(), {run_id!r}, unsent_path={str(tmp_path / 'u.jsonl')!r}, flush_interval=60)
        for step in range(1, 2001):
            logger.log_metrics({{"loss": 1.0 / step}}, step)
        raise RuntimeError("bad batch")
    """, tracking_uri)
    assert done.returncode == 1 and "bad batch" in done.stderr
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "loss")] == list(range(1, 2001))


@pytest.mark.slow
def test_points_are_flushed_on_sigterm_in_the_training_job(tracking_uri, tmp_path):
    """SIGTERM becomes a stop (tracking.train), so the buffer is sent before the process ends."""
    import signal

    run_id = _new_run()
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mlflow.tracking import MlflowClient
        from tracking.run_logger import RunLogger
        from tracking.train import _sigterm_as_stop
        logger = RunLogger(MlflowClient(), {run_id!r}, unsent_path={str(tmp_path / 'u.jsonl')!r}, flush_interval=60)
        last = 0
        try:
            with _sigterm_as_stop():
                for step in range(1, 10**9):
                    logger.log_metrics({{"loss": 1.0 / step}}, step)
                    last = step
                    if step == 100:
                        print("ready", flush=True)
                    time.sleep(0.001)
        except KeyboardInterrupt:
            report = logger.close()
            print("last", last, report.complete, flush=True)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": tracking_uri})
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    _, last, complete = out.split()
    assert complete == "True"
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "loss")] == list(range(1, int(last) + 1))


def test_a_malformed_unsent_file_is_refused_with_a_value_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"metric": ["loss", 1.0, 0, 1]}) + "\n")
    with pytest.raises(ValueError, match="not a peft-studio unsent-points file"):
        read_unsent(path)
