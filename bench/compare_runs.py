"""Comparing 1,000 analyzed runs vs. just fetching their histories, on sqlite.

An experiment of ``RUNS`` runs is created once in a ``sqlite:///`` store in a temporary directory. Each run
has a short history (``HISTORY_STEPS`` steps of loss and grad_norm, eval_loss every ``EVAL_EVERY`` steps;
seeded shapes from ``bench/_mlflow.synthetic_history``), params that differ in ``learning_rate`` (4 values)
and ``lora_r`` (4 values), and is already analyzed. Run 0 is analyzed for real with ``analyze_run`` (so the
best run has its ``quality/analysis.json`` and the comparison reads its suggestions as usual); the others are
pre-tagged the way tests/test_tracking_compare.py does it (one ``log_batch`` per run with the history, the
params, ``quality_score`` and the ``quality.*`` tags an analysis writes), with scores below run 0's that
depend on the params plus seeded noise. Runs are left RUNNING (a comparison searches active runs whatever
their status; ending 1,000 runs would add about 20 s of setup). Then, interleaved and repeated ``REPEATS`` times:

  fetch          ``get_metric_history`` for the three keys of every run, one call after another (the
                 floor for any comparison that reads the histories)
  compare        ``tracking.compare.compare_runs(client, experiment)``: one paged search, the table, the
                 param effects, the best run's suggestions (one artifact download), the Markdown
  compare + log  the CLI's default path (``peft-studio compare``): ``compare_runs`` then ``log_comparison``
                 (a comparison run with summary.md, runs.csv, the score-trend and best/worst-loss PNGs);
                 the comparison run is deleted after each repeat so every repeat searches the same runs

No goal is set for the ratio: it shows what the one-search design saves over reading every history.
The ``mlflow server`` variant is left out: creating 1,000 runs through a local server takes several
minutes on this machine (about 0.25 s per run), past the time budget of this benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._mlflow import (
    artifact_uri,
    median,
    print_header,
    print_table,
    quiet_mlflow,
    store,
    synthetic_history,
    timed,
)

RUNS = 1000
# 100 steps, not 200: sqlite's log_batch costs about 0.35 ms a metric here, so 1,000 runs of 200 steps take
# about 3 minutes to create alone; 100 steps keep the whole benchmark near its ~3 minute budget.
HISTORY_STEPS = 100
EVAL_EVERY = 10
KEYS = ("loss", "grad_norm", "eval_loss")
REPEATS = 3
EXPERIMENT = "bench-compare"
LEARNING_RATES = ("5e-5", "1e-4", "2e-4", "5e-4")
LORA_RS = ("4", "8", "16", "32")
FACTOR_MAX = {"loss_reduction": 30, "convergence": 25, "stability": 20, "overfitting": 15, "efficiency": 10}
TIME_BUDGET_S = 180


def params_of(i: int) -> dict[str, str]:
    return {"learning_rate": LEARNING_RATES[i % 4], "lora_r": LORA_RS[(i // 4) % 4], "epochs": "3"}


def history_metrics(i: int, start_ms: int) -> list:
    from mlflow.entities import Metric

    history = synthetic_history(HISTORY_STEPS, seed=i, eval_every=EVAL_EVERY, spikes=0)
    return [Metric(key, float(v), start_ms + int(s) * 1000, int(s))
            for key in KEYS for s, v in zip(history[key][0].tolist(), history[key][1].tolist())]


def create_runs(client, experiment_id: str) -> tuple[list[str], float]:
    """The experiment's runs: run 0 analyzed for real, the others pre-tagged below its score.
    Returns (run ids, run 0's score)."""
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag

    from tracking.analyze import analyze_run

    rng = np.random.default_rng(7)
    base_ms = int(time.time() * 1000) - RUNS * 600_000  # one run every 10 minutes, up to now
    run_ids = []
    best = None
    for i in range(RUNS):
        start_ms = base_ms + i * 600_000
        run_id = client.create_run(experiment_id, start_time=start_ms, run_name=f"run-{i}").info.run_id
        metrics = history_metrics(i, start_ms)
        params = [Param(k, v) for k, v in params_of(i).items()]
        if i == 0:
            client.log_batch(run_id, metrics=metrics, params=params)
            best = analyze_run(client, run_id).quality_score
        else:
            # below run 0: higher with lora_r 8/16 and a mid learning rate, plus noise
            score = (best - 45 + 8 * (LEARNING_RATES.index(params_of(i)["learning_rate"]) in (1, 2))
                     + 6 * (params_of(i)["lora_r"] in ("8", "16")) + rng.uniform(0, 30))
            score = round(min(score, best - 0.1), 1)
            tags = {"quality.score": f"{score:g}", "quality.assessment": "bench", "quality.schema_version": "1.0",
                    **{f"quality.points.{k}": f"{m * score / 100:.1f}" for k, m in FACTOR_MAX.items()}}
            client.log_batch(run_id, metrics=[*metrics, Metric("quality_score", score, start_ms, 0)],
                             params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        run_ids.append(run_id)
        if (i + 1) % 250 == 0:
            print(f"  created {i + 1} runs", flush=True)
    return run_ids, best


def fetch_all(client, run_ids: list[str]) -> int:
    return sum(len(client.get_metric_history(run_id, key)) for run_id in run_ids for key in KEYS)


def compare_and_log(client, experiment_id: str):
    from tracking.compare import compare_runs, log_comparison

    start = time.perf_counter()
    result = compare_runs(client, EXPERIMENT)
    compared = time.perf_counter()
    log_comparison(client, result, experiment_id)
    return result, compared - start, time.perf_counter() - compared


class _Truncations(logging.Filter):
    """Counts (and keeps out of the output) MLflow's warning that a tag value was cut to its length limit:
    ``log_comparison`` sets the whole Markdown as the run description, 111,000 characters for 1,000 runs."""

    def __init__(self):
        super().__init__()
        self.lengths: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "is truncated to" not in message:
            return True
        found = re.search(r"\((\d+) characters\) is truncated to (\d+) characters", message)
        self.lengths.append(f"{int(found[1]):,} -> {int(found[2]):,}" if found else "?")
        return False


def main() -> None:
    from mlflow.tracking import MlflowClient

    from tracking.compare import compare_runs

    began = time.perf_counter()
    load = os.getloadavg()
    print_header()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min; other work on the "
          "machine shows up as noise)")
    points_per_run = len(history_metrics(0, 0))
    print(f"{RUNS} runs x {HISTORY_STEPS} steps of {', '.join(KEYS)} (eval_loss every {EVAL_EVERY} steps) = "
          f"{points_per_run} points a run; params learning_rate x lora_r (4 x 4 values); "
          f"{REPEATS} repeats, interleaved; store: sqlite")
    print()
    rows = {"fetch": [], "compare": [], "compare + log": [], "log part": []}
    truncations = _Truncations()
    validation_log = logging.getLogger("mlflow.utils.validation")
    validation_log.addFilter(truncations)
    with contextlib.ExitStack() as stack:
        stack.callback(validation_log.removeFilter, truncations)
        stack.enter_context(quiet_mlflow())
        uri, artifacts = stack.enter_context(store("sqlite"))
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_uri(artifacts))
        created_s, (run_ids, best) = timed(create_runs, client, experiment_id)
        print(f"  created {len(run_ids)} runs in {created_s:.1f} s (run 0 analyzed for real: {best:g}/100; "
              "the others pre-tagged below it)", flush=True)
        for rep in range(REPEATS):
            fetch_s, points = timed(fetch_all, client, run_ids)
            compare_s, result = timed(compare_runs, client, EXPERIMENT)
            (logged, compare_part, log_part) = compare_and_log(client, experiment_id)
            if len(result.runs) != RUNS or result.unanalyzable or len(logged.runs) != RUNS:
                raise RuntimeError(f"compared {len(result.runs)} runs of {RUNS}, {len(result.unanalyzable)} "
                                   "not analyzable")
            rows["fetch"].append(fetch_s)
            rows["compare"].append(compare_s)
            rows["compare + log"].append(compare_part + log_part)
            rows["log part"].append(log_part)
            print(f"  rep {rep + 1}: fetch {fetch_s:6.2f} s ({points:,} points, {len(run_ids) * len(KEYS)} calls) | "
                  f"compare {compare_s:5.2f} s | compare + log {compare_part + log_part:5.2f} s "
                  f"(log {log_part:.2f} s) | best {result.runs['quality_score'].max():g}, "
                  f"effects: {', '.join(sorted({e.param for e in result.effects})) or 'none'}, "
                  f"next: {'; '.join(result.changes) or '-'}", flush=True)
            client.delete_run(logged.comparison_run_id)
    fetch = median(rows["fetch"])
    print()
    print(f"Medians over {REPEATS} interleaved repeats (fetch, compare, compare + log, ...)")
    print_table(["what", "median s", "range s", "vs fetch"],
                [[name, f"{median(v):.2f}", f"{min(v):.2f}-{max(v):.2f}",
                  f"{median(v) / fetch:.3f}x" if name != "log part" else "-"] for name, v in rows.items()])
    print()
    print("fetch: get_metric_history for each of the 3 keys of each run, sequentially; compare: "
          "tracking.compare.compare_runs(client, experiment);")
    print("compare + log: compare_runs then log_comparison (the `peft-studio compare` default); log part: "
          "log_comparison alone, within that call.")
    if truncations.lengths:
        print(f"MLflow warned {len(truncations.lengths)} time(s) that the comparison run's description "
              f"(mlflow.note.content) was truncated: {', '.join(sorted(set(truncations.lengths)))} characters "
              "(warnings counted here, not printed)")
    total = time.perf_counter() - began
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"total benchmark time {total:.1f} s (budget ~{TIME_BUDGET_S} s: "
          f"{'PASS' if total <= TIME_BUDGET_S else 'MISS'}; run creation {created_s:.1f} s of it)")


if __name__ == "__main__":
    main()
