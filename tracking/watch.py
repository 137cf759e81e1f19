"""``peft-studio watch``: find runs that died without a word, fail them, analyze them, say so once.

A training job writes the tag ``peft_studio.heartbeat`` every ``heartbeat_seconds`` (``tracking/heartbeat.py``).
A run still RUNNING whose latest beat is older than the limit (``--limit``, and at least three of the run's own
intervals) has lost its process: SIGKILL, the OOM killer, a machine that went away. For each such run the
watcher

1. claims it: logs the param ``peft_studio.watch_claim`` with a value unique to this watcher. MLflow params
   cannot change once logged and the SQL stores enforce that with a primary key, so of two watchers (or two
   ``--once`` calls) only the one whose write wins goes on; the others get an error and skip the run;
2. tags it ``peft_studio.dead`` ("no heartbeat since ...") and ends it FAILED;
3. analyzes the partial history (``analyze_run``; a history too short to score is said, not fatal);
4. sends one error notification through the watcher's channels.

One poll is one paginated ``search_runs`` per experiment with ``attributes.status = 'RUNNING'``; only the runs
found silent cost more requests (bench/RESULTS.md B6).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .heartbeat import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG

log = logging.getLogger(__name__)

CLAIM_PARAM = "peft_studio.watch_claim"
DEAD_TAG = "peft_studio.dead"
DEFAULT_LIMIT_SECONDS = 300.0  # five heartbeats at the default interval
DEFAULT_POLL_SECONDS = 60.0
INTERVALS_ALLOWED = 3  # a run is never silent before missing this many of its own beats
PAGE_SIZE = 1000


@dataclass(frozen=True)
class SilentRun:
    run_id: str
    experiment_id: str
    name: str
    last_beat: float  # Unix seconds
    silent_seconds: float


@dataclass
class PollResult:
    checked: int = 0  # RUNNING runs with a heartbeat
    silent: list[SilentRun] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)  # run ids this watcher failed and notified


def utc_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def experiment_ids(client: MlflowClient, names: tuple[str, ...] = ()) -> list[str]:
    """The named experiments (a ``ValueError`` names one that does not exist), or every active one."""
    if names:
        ids = []
        for name in names:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise ValueError(f"no experiment named {name!r} at this tracking URI; pass an existing "
                                 "--experiment, or none to watch every experiment")
            ids.append(found.experiment_id)
        return ids
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def find_silent_runs(client: MlflowClient, ids: list[str], limit: float, filter_string: str = "",
                     now: float | None = None) -> tuple[int, list[SilentRun]]:
    """RUNNING runs (matching ``filter_string``) whose heartbeat is older than ``limit`` seconds and than
    ``INTERVALS_ALLOWED`` of their own intervals; returns (runs with a heartbeat checked, silent runs).
    Runs without a heartbeat tag (other tools', or older peft-studio jobs) are never judged."""
    query = "attributes.status = 'RUNNING'" + (f" and {filter_string.strip()}" if filter_string.strip() else "")
    now = time.time() if now is None else now
    checked, silent = 0, []
    for start in range(0, len(ids), 100):  # search_runs takes at most 100 experiments at once
        token = None
        while True:
            page = client.search_runs(ids[start:start + 100], query, max_results=PAGE_SIZE, page_token=token)
            for run in page:
                tags = run.data.tags
                try:
                    beat = float(tags[HEARTBEAT_TAG])
                except (KeyError, ValueError):
                    continue
                checked += 1
                try:
                    interval = float(tags.get(HEARTBEAT_INTERVAL_TAG, "0"))
                except ValueError:
                    interval = 0.0
                allowed = max(limit, INTERVALS_ALLOWED * interval)
                if now - beat > allowed and CLAIM_PARAM not in run.data.params:
                    name = run.info.run_name or run.info.run_id
                    silent.append(SilentRun(run.info.run_id, run.info.experiment_id, name, beat, now - beat))
            token = page.token
            if not token:
                break
    return checked, silent


def claim(client: MlflowClient, run_id: str, watcher_id: str) -> bool:
    """True for exactly one watcher per run: the one whose claim param went in first."""
    try:
        client.log_param(run_id, CLAIM_PARAM, watcher_id)
    except MlflowException as exc:
        log.debug("run %s was claimed by another watcher: %s", run_id, exc.message)
        return False
    # The SQL stores refuse a second value; read it back so a store that did not still elects one watcher.
    return client.get_run(run_id).data.params.get(CLAIM_PARAM) == watcher_id


def report_silent_run(client: MlflowClient, silent: SilentRun, notifier, tracking_uri: str) -> None:
    """Fail the (claimed) run, analyze its partial history, and send one error notification."""
    from notify.silent import silent_run_event

    from .analyze import AnalysisError, analyze_run
    from .mlflow_io import run_page_url

    since = utc_text(silent.last_beat)
    client.set_tag(silent.run_id, DEAD_TAG, f"no heartbeat since {since} ({silent.silent_seconds:.0f} s before "
                   "peft-studio watch looked); marked FAILED")
    client.set_terminated(silent.run_id, "FAILED")
    score = None
    try:
        score = analyze_run(client, silent.run_id).quality_score
    except (AnalysisError, MlflowException, ValueError) as exc:
        log.info("no partial analysis for run %s: %s", silent.run_id, exc)
    run = client.get_run(silent.run_id)
    losses = {key: run.data.metrics[key] for key in ("loss", "eval_loss") if key in run.data.metrics}
    last_step = None
    try:
        history = client.get_metric_history(silent.run_id, "loss")
        last_step = max((m.step for m in history), default=None)
    except MlflowException:
        pass
    notifier.send(silent_run_event(silent.name, silent.silent_seconds, since, last_step, losses, score,
                                   run_page_url(tracking_uri, silent.experiment_id, silent.run_id)))
    log.warning("run %s (%s): no heartbeat since %s; marked FAILED", silent.name, silent.run_id, since)


def poll(client: MlflowClient, notifier, ids: list[str], limit: float, filter_string: str = "",
         watcher_id: str | None = None, tracking_uri: str = "") -> PollResult:
    """One look: find silent runs, and report each one this watcher wins the claim for."""
    watcher_id = watcher_id or f"{uuid.uuid4().hex}"
    checked, silent = find_silent_runs(client, ids, limit, filter_string)
    result = PollResult(checked, silent)
    for run in silent:
        try:
            if claim(client, run.run_id, watcher_id):
                report_silent_run(client, run, notifier, tracking_uri)
                result.reported.append(run.run_id)
        except MlflowException as exc:  # one run's trouble does not stop the others
            log.warning("could not report run %s: %s", run.run_id, exc.message)
    return result


def watch(notifier, experiments: tuple[str, ...] = (), filter_string: str = "", limit: float = DEFAULT_LIMIT_SECONDS,
          once: bool = False, interval: float = DEFAULT_POLL_SECONDS, on_poll=None) -> PollResult:
    """Poll once (returns its result), or every ``interval`` seconds until interrupted; ``on_poll(result)``
    after each poll."""
    import mlflow

    client = MlflowClient()
    tracking_uri = mlflow.get_tracking_uri()
    watcher_id = uuid.uuid4().hex
    while True:
        started = time.monotonic()
        ids = experiment_ids(client, experiments)
        result = poll(client, notifier, ids, limit, filter_string, watcher_id, tracking_uri)
        if on_poll is not None:
            on_poll(result)
        if once:
            return result
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
