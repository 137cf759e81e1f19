"""The watcher: one poll over 1,000 RUNNING runs on a real ``mlflow server``, against a 10 s budget.

``peft-studio watch`` polls every 60 s by default; one poll must take a small share of that on a server full
of running jobs. Setup (not timed): a sqlite store in a temporary directory gets ``RUNS`` RUNNING runs, each
created with its heartbeat tags in one ``create_run`` (written to the store directly: creating 1,000 runs
through the server's REST API takes minutes here); ``DEAD`` of them have a heartbeat 30 minutes old and a
60-point loss history, the others a fresh one. Then a real ``mlflow server`` (sqlite backend, one worker) is
started on that store and, through it, timed:

  poll, all healthy   ``tracking.watch.poll`` over the experiment with a 1 h limit (no run is silent that
                      long), twice (a cold, then a warm server): the paged ``search_runs`` (1,000 runs
                      with their tags) and the heartbeat check
  poll, 10 dead       the same poll with the dead runs: each is claimed, tagged, ended FAILED, analyzed
                      (the partial analysis writes its report and PNG to the run) and reported (to a
                      notifier without channels: delivery is not what is measured)
  poll again          the next poll (the dead runs are FAILED now: nothing to report)

Budget: a poll of 1,000 healthy runs in at most 10 s (a sixth of the default interval), for the steady state of
the loop (the first poll against a freshly started server is shown apart); the dead runs' cost is per run
reported and is shown, not budgeted (an analysis each).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._mlflow import MlflowServer, _stop, print_header, print_table, quiet_mlflow, temp_dir, timed, verdict  # noqa: E402

RUNS = 1000
DEAD = 10
BUDGET_S = 10.0


def _populate(uri: str, artifacts: Path) -> tuple[str, list[str]]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tracking.heartbeat import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG

    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bench-watch", artifact_location=artifacts.as_uri())
    now, dead = time.time(), []
    for i in range(RUNS):
        is_dead = i < DEAD
        tags = {HEARTBEAT_TAG: f"{now - (1800 if is_dead else 5):.1f}", HEARTBEAT_INTERVAL_TAG: "60",
                "bench.dead": "yes" if is_dead else "no"}
        run = client.create_run(experiment_id, tags=tags)
        if is_dead:
            ms = int(now * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric("loss", 2.0 / (1 + 0.1 * s) + 0.01 * (s % 3), ms, s)
                                                       for s in range(1, 61)])
            dead.append(run.info.run_id)
    return experiment_id, dead


def _start_server(db: Path, artifacts: Path, log: Path) -> tuple[str, subprocess.Popen]:
    server = MlflowServer(f"sqlite:///{db}", artifacts, log=log)
    return server.start(timeout=180), server.process


def main() -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from notify.delivery import Channels, Notifier
    from tracking.watch import poll

    print_header()
    logging.getLogger("tracking.watch").setLevel(logging.ERROR)  # one line per dead run otherwise
    with temp_dir() as root, quiet_mlflow():
        artifacts = root / "artifacts"
        artifacts.mkdir()
        setup, (experiment_id, dead) = timed(_populate, f"sqlite:///{root / 'mlflow.db'}", artifacts)
        print(f"setup: {RUNS} RUNNING runs ({DEAD} silent for 30 min) written to sqlite in {setup:.1f} s")
        uri, server = _start_server(root / "mlflow.db", artifacts, root / "server.log")
        try:
            mlflow.set_tracking_uri(uri)
            client = MlflowClient(uri)
            notifier = Notifier(Channels())
            # a 1 h limit: the 30-minute silences are not silent yet, so all 1,000 runs read as healthy. The first
            # poll meets a cold server (its first search loads the store's tables); a loop's later polls do not.
            cold_s, _ = timed(poll, client, notifier, [experiment_id], 3600.0, "", None, uri)
            healthy_s, healthy = timed(poll, client, notifier, [experiment_id], 3600.0, "", None, uri)
            dead_s, with_dead = timed(poll, client, notifier, [experiment_id], 300.0, "", None, uri)
            again_s, again = timed(poll, client, notifier, [experiment_id], 300.0, "", None, uri)
            notifier.close()
            failed = sum(client.get_run(run_id).info.status == "FAILED" for run_id in dead)
        finally:
            _stop(server)
    print_table(["poll", "runs checked", "silent", "reported", "seconds"], [
        ["all healthy, first (cold server)", healthy.checked, 0, 0, f"{cold_s:.2f}"],
        ["all healthy", healthy.checked, len(healthy.silent), len(healthy.reported), f"{healthy_s:.2f}"],
        [f"{DEAD} dead", with_dead.checked, len(with_dead.silent), len(with_dead.reported), f"{dead_s:.2f}"],
        ["again", again.checked, len(again.silent), len(again.reported), f"{again_s:.2f}"],
    ])
    per_dead = (dead_s - healthy_s) / max(len(with_dead.reported), 1)
    print(f"\n{failed}/{DEAD} dead runs FAILED; reporting costs about {per_dead:.2f} s per dead run "
          "(claim, tag, end, partial analysis, notification)")
    print(f"verdict: {verdict(healthy_s <= BUDGET_S and len(with_dead.reported) == DEAD and not again.reported)} "
          f"(poll of {RUNS} healthy runs {healthy_s:.2f} s, budget {BUDGET_S:.0f} s)")


if __name__ == "__main__":
    main()
