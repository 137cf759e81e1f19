"""Analyzing a 100,000-step run vs. just fetching its histories, on sqlite and on a local mlflow server.

One run of ``STEPS`` steps with four metrics (loss, grad_norm and learning_rate every step, eval_loss every
``EVAL_EVERY`` steps; seeded numpy shapes from ``bench/_mlflow.synthetic_history``: a noisy exponential
decay with a few isolated spikes, a linear warm-up/decay schedule) is created once per store with
``log_batch`` calls of 1,000 metrics. Then, interleaved and repeated ``REPEATS`` times:

  fetch     ``MlflowClient.get_metric_history`` for the four keys, one after another (the floor: what any
            reader of the full history pays)
  analyze   ``tracking.analyze.analyze_run(client, run_id)`` end to end: read the history, score it, write
            the metric, tags, analysis.json, report.md and the loss-curve PNG back to the run

Each analyze is instrumented (wrappers around the functions ``analyze_run`` calls, same process) to split
it into read (``read_history``), score (``analyze_history``), plot (building the figure and rendering the
PNG) and write (``write_analysis`` less the plot: metric, tags, two text artifacts, the PNG upload); "other"
is the rest (``analyze_run``'s own ``get_run``). Scoring alone is then timed ``SCORING_REPEATS`` times on
the frame already read. A warm-up (scoring and rendering a small history) runs first, so one-off imports
and font loading are not in the first repeat. Stores:

  sqlite    a ``sqlite:///`` tracking URI in a temporary directory, artifacts in a local directory
  server    ``mlflow server`` on a free 127.0.0.1 port (sqlite backend, ``--serve-artifacts``, one worker),
            started here and killed at the end

Goals (reported as PASS/MISS, never asserted):
  * median analyze / median fetch <= ``RATIO_GOAL`` on each store;
  * scoring alone (``scoring.analyze_history`` on the already-read frame) median < ``SCORING_GOAL_S`` s.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._mlflow import (
    artifact_uri,
    fetch_sequentially,
    log_history,
    median,
    print_header,
    print_table,
    quiet_mlflow,
    store,
    synthetic_history,
    timed,
    verdict,
)

STEPS = 100_000
EVAL_EVERY = 100
REPEATS = 3
SCORING_REPEATS = 5
STORES = ("sqlite", "server")
RATIO_GOAL = 1.2
SCORING_GOAL_S = 0.2
PHASES = ("read", "score", "plot", "write", "other")


@contextlib.contextmanager
def phase_timer():
    """Time the phases of ``analyze_run`` while the block runs: yields a dict filled with seconds."""
    import scoring.plot
    import tracking.analyze as analyze_module

    spent = {"read": 0.0, "score": 0.0, "plot": 0.0, "write": 0.0}
    originals = {name: getattr(analyze_module, name) for name in ("read_history", "analyze_history", "write_analysis")}
    original_figure = scoring.plot.loss_curve_figure

    def timing(phase, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start
        return wrapper

    def figure(analysis):
        start = time.perf_counter()
        fig = original_figure(analysis)
        spent["plot"] += time.perf_counter() - start
        fig.savefig = timing("plot", fig.savefig)  # MLflow's log_figure renders the PNG with fig.savefig
        return fig

    analyze_module.read_history = timing("read", originals["read_history"])
    analyze_module.analyze_history = timing("score", originals["analyze_history"])
    analyze_module.write_analysis = timing("write", originals["write_analysis"])
    scoring.plot.loss_curve_figure = figure  # write_analysis imports it by name when it runs
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(analyze_module, name, fn)
        scoring.plot.loss_curve_figure = original_figure
        spent["write"] -= spent["plot"]  # the plot is drawn and rendered inside write_analysis


def warm_up() -> None:
    """Score and render a small history once, so imports and font loading are not timed."""
    import pandas as pd

    from scoring import analyze_history
    from scoring.plot import loss_curve_figure

    small = synthetic_history(200, seed=1, eval_every=20)
    frame = pd.concat([pd.DataFrame({"key": key, "step": steps, "value": values})
                       for key, (steps, values) in small.items()], ignore_index=True)
    loss_curve_figure(analyze_history(frame)).savefig(io.BytesIO(), format="png")


def measure(kind: str) -> dict:
    from mlflow.tracking import MlflowClient

    from scoring import analyze_history
    from tracking.analyze import analyze_run
    from tracking.mlflow_io import read_history

    with store(kind) as (uri, artifacts):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment("bench-analysis", artifact_location=artifact_uri(artifacts))
        run_id = client.create_run(experiment_id, run_name="100k-steps").info.run_id
        history = synthetic_history(STEPS, seed=0, eval_every=EVAL_EVERY)
        points = sum(len(steps) for steps, _ in history.values())
        created_s, calls = timed(log_history, client, run_id, history)
        client.set_terminated(run_id)
        print(f"  {kind}: created run {run_id[:8]}: {points:,} points in {calls} log_batch calls, "
              f"{created_s:.1f} s", flush=True)
        keys = sorted(history)
        fetch, analyze, phases = [], [], []
        for rep in range(REPEATS):
            fetch_s, fetched = timed(fetch_sequentially, client, run_id, keys)
            if fetched != points:
                raise RuntimeError(f"fetched {fetched} points of {points}")
            with phase_timer() as spent:
                analyze_s, analysis = timed(analyze_run, client, run_id)
            spent["other"] = analyze_s - sum(spent.values())
            fetch.append(fetch_s)
            analyze.append(analyze_s)
            phases.append(dict(spent))
            print(f"  {kind} rep {rep + 1}: fetch {fetch_s:6.2f} s | analyze {analyze_s:6.2f} s "
                  f"(ratio {analyze_s / fetch_s:.2f}) = "
                  + " + ".join(f"{name} {spent[name]:.2f}" for name in PHASES)
                  + f" | score {analysis.quality_score:g}, spikes {len(analysis.events['loss_spike_steps'])}"
                  f"+{len(analysis.events['grad_norm_spike_steps'])}", flush=True)
        frame = read_history(client, run_id)
        params = client.get_run(run_id).data.params
        scoring = [timed(analyze_history, frame, params=params)[0] for _ in range(SCORING_REPEATS)]
        print(f"  {kind}: scoring alone on the read frame ({len(frame):,} rows): "
              + ", ".join(f"{s:.3f}" for s in scoring) + " s", flush=True)
        artifacts_written = sorted(a.path for a in client.list_artifacts(run_id, "quality"))
    return {"kind": kind, "points": points, "created_s": created_s, "fetch": fetch, "analyze": analyze,
            "phases": phases, "scoring": scoring, "artifacts": artifacts_written}


def report(results: list[dict]) -> None:
    print()
    print(f"Medians over {REPEATS} interleaved repeats (fetch, analyze, fetch, analyze, ...); "
          f"scoring alone over {SCORING_REPEATS}")
    rows = []
    for r in results:
        fetch, analyze, scoring = median(r["fetch"]), median(r["analyze"]), median(r["scoring"])
        ratio = analyze / fetch
        ratios = [a / f for a, f in zip(r["analyze"], r["fetch"])]  # paired, per repeat
        rows.append([r["kind"], f"{r['points']:,}", f"{fetch:.2f}", f"{analyze:.2f}", f"{ratio:.2f}",
                     f"{min(ratios):.2f}-{max(ratios):.2f}",
                     verdict(ratio <= RATIO_GOAL), f"{scoring:.3f}", verdict(scoring < SCORING_GOAL_S)])
    print_table(["store", "points", "fetch s", "analyze s", "ratio", "ratio range", f"ratio <= {RATIO_GOAL:g}",
                 "scoring only s", f"scoring < {SCORING_GOAL_S:g} s"], rows)
    print()
    print("Where analyze goes (medians of each phase, seconds); 'read - fetch': median of the paired "
          "differences (each analyze against the fetch just before it)")
    rows = []
    for r in results:
        read_minus_fetch = median(p["read"] - f for p, f in zip(r["phases"], r["fetch"]))
        rows.append([r["kind"], *[f"{median(p[name] for p in r['phases']):.2f}" for name in PHASES],
                     f"{median(r['analyze']):.2f}", f"{read_minus_fetch:+.2f}",
                     f"{median(r['analyze']) - median(r['fetch']):+.2f}"])
    print_table(["store", *PHASES, "analyze", "read - fetch", "analyze - fetch"], rows)
    print()
    print("read: tracking.mlflow_io.read_history (get_run + get_metric_history per key + building the frame); "
          "score: scoring.analyze_history;")
    print("plot: loss_curve_figure(analysis) + savefig to PNG; write: write_analysis less the plot (log_batch of the "
          "metric and tags, analysis.json, report.md, the PNG upload); other: analyze_run's get_run.")
    for r in results:
        print(f"{r['kind']}: run created in {r['created_s']:.1f} s; quality/ holds {', '.join(r['artifacts'])}")


def main() -> None:
    began = time.perf_counter()
    load = os.getloadavg()
    print_header()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min; other work on the "
          "machine shows up as noise)")
    print(f"run: {STEPS:,} steps x (loss, grad_norm, learning_rate) + eval_loss every {EVAL_EVERY} steps; "
          f"{REPEATS} repeats per store, interleaved; stores: {', '.join(STORES)}")
    print()
    warm_up()
    results = []
    with quiet_mlflow():
        for kind in STORES:
            results.append(measure(kind))
    report(results)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"total benchmark time {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
