"""Notification delivery vs. the training loop: step times with no, healthy, hanging and failing webhooks.

A simulated training loop (``TOTAL_STEPS`` steps of a fixed, calibrated CPU-bound numpy chunk) calls
``TrainingMonitor.log`` and ``.step`` every step exactly as a real loop does, then ``complete()`` and
``close()`` (timed on its own: the "exit flush"). It runs under four conditions, interleaved and repeated
``REPEATS`` times in one process:

  (a) no channels           ``Notifier(load_channels(""))`` with no environment variable: zero channels
  (b) healthy webhook       ``HTTPReceiver`` on 127.0.0.1 answering 200 at once
  (c) webhook hangs 10 s    the receiver sleeps 10 s before answering (``receiver.delay = 10``)
  (d) webhook HTTP 500      the receiver answers 500 (``receiver.status = 500``)

Each receiver runs in a process of its own (``WebhookProcess``), as a real service does (until 2026-12-02 it
ran on threads of the benchmark's process, which put its request parsing on the training process's GIL).

plus the same four again with ``TrainingMonitor(..., provisional_scores=False)`` (a0..d0, a diagnostic
block), so that a slowdown at a milestone can be told apart between the provisional score (computed at
every milestone in ``TrainingMonitor``'s helper process since 2026-12-02, on a thread of the training
process before) and notification delivery (the ``Notifier``'s threads). With provisional scores and a
channel, the send helper scores each milestone message and sends it (since 2026-12-03); with no channel, the
score helper answers and a thread of the training process sends it ('score ms' times that path; '-' when
the send helper did it). Either way a milestone's message goes out when its score is known (12-150 ms later,
1-3 s for the first one while the helper loads the scoring code), so its delivery cost can fall on later steps
than the +-2 measured: see 'max' and 'excess ms'. Every notifier is
``Notifier(channels, send_timeout=2.0, retries=1, flush_timeout=5.0, send_from_helper=True)``, as the job's
(since 2026-12-02: sends are made by a helper process). Nothing leaves 127.0.0.1.

Goals (reported as PASS/MISS, never asserted):
  * the slowest step within +-2 steps of each milestone (25/50/75 %) <= 1.1x the run's median step;
  * ``close()`` bounded by flush_timeout (5 s) + ``EXIT_MARGIN_S``.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from notify.delivery import Notifier  # noqa: E402
from notify.delivery.channels import load_channels  # noqa: E402
from tracking.monitor import TrainingMonitor  # noqa: E402

TOTAL_STEPS = 400
REPEATS = 5
MILESTONES = (25, 50, 75)
WINDOW = 2  # steps either side of a milestone step
EXCESS_AFTER = 10  # steps after a milestone over which the extra time (above the median step) is summed
TARGET_STEP_MS = 6.5  # the calibrated work per step (the goal: a median step of 5-10 ms)
STEP_GOAL = 1.1  # slowest step at a milestone / median step
NOTIFIER_KW = {"send_timeout": 2.0, "retries": 1, "flush_timeout": 5.0, "send_from_helper": True}  # as the job
EXIT_MARGIN_S = 1.0
EXIT_GOAL_S = NOTIFIER_KW["flush_timeout"] + EXIT_MARGIN_S
MATRIX = 64  # the work: MATRIX x MATRIX float64 matmuls (+ tanh), numpy releasing the GIL as torch would

MAIN_CONDITIONS = {
    "a": "no channels",
    "b": "healthy webhook",
    "c": "webhook hangs 10 s",
    "d": "webhook HTTP 500",
}
# Diagnostic: the same four with provisional_scores=False (the trailing 0 in the name).
CONDITIONS = {**MAIN_CONDITIONS, **{f"{key}0": f"{label}, no prov. score" for key, label in MAIN_CONDITIONS.items()}}

_rng = np.random.default_rng(0)
_A = _rng.standard_normal((MATRIX, MATRIX))
_B = _rng.standard_normal((MATRIX, MATRIX)) / math.sqrt(MATRIX)


def work(iterations: int) -> float:
    """The fixed CPU-bound chunk of one training step."""
    x = _A
    for _ in range(iterations):
        x = np.tanh(x @ _B)
    return float(x[0, 0])


def calibrate(target_ms: float = TARGET_STEP_MS) -> tuple[int, float]:
    """The number of iterations whose median time is about ``target_ms``, and that median (ms)."""
    probe = 50
    work(probe)
    seconds = statistics.median(_timed(work, probe) for _ in range(40))
    iterations = max(1, round(probe * target_ms / 1000 / seconds))
    check = statistics.median(_timed(work, iterations) for _ in range(60))
    return iterations, check * 1000


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def curve(step: int) -> tuple[float, float]:
    """A plausible, smooth loss and grad norm (no spikes, so the watch raises no warning)."""
    loss = 0.4 + 2.0 * math.exp(-step / 120) + 0.01 * math.sin(step / 3)
    grad_norm = 0.8 + 0.3 * math.exp(-step / 200) + 0.02 * math.cos(step / 5)
    return loss, grad_norm


class WebhookProcess:
    """tests/receivers.py's ``HTTPReceiver`` in a process of its own, as a real webhook service is: parsing the
    request and answering it is the service's CPU, not the training process's GIL (in the same process, the
    receiver's threads took the GIL at every milestone and were counted against the notifier)."""

    SERVE = (
        "import sys; sys.path.insert(0, sys.argv[1]); from receivers import HTTPReceiver\n"
        "receiver = HTTPReceiver(); receiver.delay = float(sys.argv[2]); receiver.status = int(sys.argv[3])\n"
        # apprise gives up reading after its own socket_read_timeout (4 s) and closes the connection, so the
        # hanging receiver's late answer hits a closed socket: keep that traceback out of the output
        "receiver.server.handle_error = lambda request, address: None\n"
        "print(receiver.url(), flush=True); sys.stdin.read(); receiver.close()\n"
    )

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SERVE, str(REPO / "tests"), str(delay), str(status)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the webhook process did not start")

    def close(self) -> None:
        self.process.stdin.close()  # it closes its server and exits
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_once(condition: str, iterations: int) -> dict[str, Any]:
    """One simulated training run under ``condition``; step times, exit time and delivery outcomes."""
    kind, scores = condition[0], not condition.endswith("0")
    receiver = None
    if kind == "a":
        channels = load_channels("", env={})
    else:
        receiver = WebhookProcess(delay=10 if kind == "c" else 0, status=500 if kind == "d" else 200)
        channels = load_channels(receiver.url)
    try:
        notifier = Notifier(channels, **NOTIFIER_KW)
        monitor = TrainingMonitor(notifier, total_steps=TOTAL_STEPS, provisional_scores=scores)
        score_seconds: list[float] = []
        score_cpu: list[float] = []
        original = monitor._send_with_score  # instrumented on this instance only: how long the score takes

        def timed_score(*args):
            # wall: until the score is back (in the helper process); cpu: this process' thread, i.e. the
            # time the scorer thread could hold the GIL
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args)
            finally:
                score_seconds.append(time.perf_counter() - start)
                score_cpu.append(time.thread_time() - cpu)

        monitor._send_with_score = timed_score
        monitor.start(model="bench-model", data="bench-data")
        times, in_monitor = [], []
        for step in range(1, TOTAL_STEPS + 1):
            start = time.perf_counter()
            work(iterations)
            loss, grad_norm = curve(step)
            calls = time.perf_counter()
            monitor.log(step, {"loss": loss, "grad_norm": grad_norm})
            monitor.step(step)
            end = time.perf_counter()
            times.append(end - start)
            in_monitor.append(end - calls)
        start = time.perf_counter()
        monitor.complete()
        complete_s = time.perf_counter() - start
        start = time.perf_counter()
        monitor.close()
        exit_s = time.perf_counter() - start
        records = notifier.records
    finally:
        if receiver is not None:
            receiver.close()
    return {
        "condition": condition,
        "times": np.array(times),
        "in_monitor": np.array(in_monitor),
        "complete_s": complete_s,
        "exit_s": exit_s,
        "score_s": score_seconds,
        "score_cpu_s": score_cpu,
        "records": records,
    }


def milestone_step(percent: int) -> int:
    return math.ceil(TOTAL_STEPS * percent / 100)


def stats(run: dict[str, Any]) -> dict[str, Any]:
    times = run["times"]
    median = float(np.median(times))
    ratios, where = {}, {}
    for percent in MILESTONES:
        step = milestone_step(percent)
        lo, hi = max(step - WINDOW, 1), min(step + WINDOW, TOTAL_STEPS)
        window = times[lo - 1 : hi]
        ratios[percent] = float(window.max()) / median
        where[percent] = lo + int(window.argmax())
    # What the milestones cost in all: time above the median, from WINDOW steps before to EXCESS_AFTER after.
    excess = sum(
        float((times[milestone_step(p) - 1 - WINDOW : milestone_step(p) + EXCESS_AFTER] - median).sum())
        for p in MILESTONES
    )
    # The same measure in windows away from milestones (and from the first steps): the loop's own jitter.
    near = {s for p in MILESTONES for s in range(milestone_step(p) - 10, milestone_step(p) + 11)}
    quiet = [
        float(times[c - 1 - WINDOW : c + WINDOW].max()) / median
        for c in range(10, TOTAL_STEPS - WINDOW, 2 * WINDOW + 1)
        if c not in near
    ]
    return {
        "median_ms": median * 1000,
        "ratios": ratios,
        "where": where,
        "p99": float(np.percentile(times, 99)) / median,
        "excess_ms": excess * 1000,
        "max": float(times.max()) / median,
        "max_step": int(times.argmax()) + 1,
        "quiet_p90": float(np.percentile(quiet, 90)),
        "exit_s": run["exit_s"],
        "complete_ms": run["complete_s"] * 1000,
        "calls_max_ms": float(run["in_monitor"].max()) * 1000,
        "calls_mean_us": float(run["in_monitor"].mean()) * 1e6,
        "score_ms": [s * 1000 for s in run["score_s"]],
        "score_cpu_ms": [s * 1000 for s in run["score_cpu_s"]],
        "deliveries": summarize(run["records"]),
    }


def summarize(records: list[dict[str, Any]]) -> str:
    """What happened to each event, compactly: '5 events: 5 ok' / '5 events: 3 timeout, 1 cut, 1 not sent'."""
    if not records:
        return "0 events"
    outcomes: dict[str, int] = {}
    channels = 0
    for record in records:
        for delivery in record["deliveries"]:
            channels += 1
            error = delivery.get("error") or ""
            if delivery["ok"]:
                kind = "ok"
            elif error.startswith("timed out"):
                kind = "timeout"
            elif error.startswith("unknown"):
                kind = "cut at close"
            elif delivery.get("dropped"):
                kind = "not sent"
            else:
                kind = f"failed x{delivery['attempts']}"
            outcomes[kind] = outcomes.get(kind, 0) + 1
    if not channels:
        return f"{len(records)} events, no channel"
    return f"{len(records)} events: " + ", ".join(f"{n} {kind}" for kind, n in outcomes.items())


def order(rep: int) -> list[str]:
    """Interleaved, rotated each repeat so no condition always runs first; each main condition is
    followed by its diagnostic twin (provisional scores off)."""
    keys = list(MAIN_CONDITIONS)
    rotation = rep % len(keys)
    return [c for key in keys[rotation:] + keys[:rotation] for c in (key, f"{key}0")]


def table(results: dict[str, list[dict[str, Any]]], conditions: list[str], base_key: str, title: str) -> None:
    """One row per condition. The verdict is on medians over the repeats, as the goal is set (issue 18): the
    median run's slowest step at each milestone; the worst run's is shown beside it."""
    base = statistics.median(r["median_ms"] for r in results[base_key])
    print(f"\n{title}")
    header = (f"| {'condition':<40} | median step ms | vs ({base_key}) | @25% med (worst) | @50% med (worst) | "
              "@75% med (worst) | p99   | "
              f"quiet p90 | excess ms | exit flush s | milestones <= {STEP_GOAL}x | exit <= {EXIT_GOAL_S:g} s |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for condition in conditions:
        runs = results[condition]
        median_ms = statistics.median(r["median_ms"] for r in runs)
        medians = {p: statistics.median(r["ratios"][p] for r in runs) for p in MILESTONES}
        worst = {p: max(r["ratios"][p] for r in runs) for p in MILESTONES}
        milestone_ok = all(v <= STEP_GOAL for v in medians.values())
        exit_worst = max(r["exit_s"] for r in runs)
        exit_ok = exit_worst <= EXIT_GOAL_S
        name = f"({condition}) {CONDITIONS[condition]}"
        print(f"| {name:<40} | {median_ms:14.2f} | {median_ms / base:{4 + len(base_key)}.2f}x | "
              + " | ".join(f"{medians[p]:5.2f}x ({worst[p]:4.2f}x)" for p in MILESTONES)
              + f" | {max(r['p99'] for r in runs):4.2f}x | "
              f"{statistics.median(r['quiet_p90'] for r in runs):8.2f}x | "
              f"{statistics.median(r['excess_ms'] for r in runs):9.1f} | "
              f"{exit_worst:12.2f} | {'PASS' if milestone_ok else 'MISS':<18} | {'PASS' if exit_ok else 'MISS':<11} |")


def main() -> None:
    began = time.perf_counter()
    now = datetime.datetime.now().astimezone()
    try:
        import apprise

        apprise_version = apprise.__version__
    except Exception:  # pragma: no cover - only for the header
        apprise_version = "?"
    print(f"date: {now:%Y-%m-%d %H:%M %Z}   machine: os.cpu_count()={os.cpu_count()}  {platform.machine()}  "
          f"{platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}  numpy {np.__version__}  apprise {apprise_version}  "
          f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms")

    iterations, step_ms = calibrate()
    print(f"work per step: {iterations} x ({MATRIX}x{MATRIX} matmul + tanh), calibrated median {step_ms:.2f} ms; "
          f"{TOTAL_STEPS} steps, milestones at steps "
          f"{', '.join(str(milestone_step(p)) for p in MILESTONES)} (+-{WINDOW}); {REPEATS} repeats, interleaved")
    print(f"notifier: {NOTIFIER_KW}; webhooks are tests/receivers.py HTTPReceiver on 127.0.0.1, each in a "
          "process of its own")
    print()

    # The notifier's WARNING lines for failed deliveries are expected in (c) and (d); the outcomes are
    # summarized from notifier.records instead.
    quiet_loggers = {name: logging.getLogger(name).level for name in ("notify", "apprise")}
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
    try:
        for rep in range(REPEATS):
            for condition in order(rep):
                result = stats(run_once(condition, iterations))
                result["rep"] = rep + 1
                results[condition].append(result)
                print(f"  rep {rep + 1} ({condition:>2}) {CONDITIONS[condition]:<28} median "
                      f"{result['median_ms']:5.2f} ms  milestones "
                      + " ".join(f"{result['ratios'][p]:.2f}" for p in MILESTONES)
                      + f"  exit {result['exit_s']:.2f} s  {result['deliveries']}", flush=True)
    finally:
        for name, level in quiet_loggers.items():
            logging.getLogger(name).setLevel(level)

    print()
    print(f"Summary over {REPEATS} runs per condition (ratios: median run, worst in brackets; median step: median of "
          "run medians)")
    table(results, list(MAIN_CONDITIONS), "a", "TrainingMonitor defaults (provisional_scores=True)")
    table(results, [f"{key}0" for key in MAIN_CONDITIONS], "a0",
          "diagnostic: the same four, TrainingMonitor(provisional_scores=False)")
    print()
    print(f"Goal: slowest step at a milestone (+-{WINDOW} steps) <= {STEP_GOAL}x the median step, the median over "
          f"the {REPEATS} runs of each condition (the worst run in brackets)")
    print(f"Goal: exit bounded by flush_timeout ({NOTIFIER_KW['flush_timeout']:g} s) + margin "
          f"({EXIT_MARGIN_S:g} s) = {EXIT_GOAL_S:g} s")
    print("'quiet p90': the same slowest-of-5-steps ratio in windows away from milestones (90th percentile, "
          "median run): the loop's own jitter")
    print(f"'excess ms': time above the median step summed over steps m-{WINDOW}..m+{EXCESS_AFTER} of the three "
          "milestones m (median run): what the milestones cost the loop in all")
    print()
    print("Per run: slowest step at each milestone (ratio @ step), overall max, time inside monitor.log+step "
          "(what the loop pays synchronously), provisional score: wall time on the scorer thread until the score is "
          "back (computed in the helper process) and that thread's CPU time in this process, complete(), close(), "
          "deliveries")
    for condition in CONDITIONS:
        for r in results[condition]:
            milestones = " ".join(f"{r['ratios'][p]:.2f}@{r['where'][p]}" for p in MILESTONES)
            scores = ("/".join(f"{s:.0f}" for s in r["score_ms"]) + " (cpu here "
                      + "/".join(f"{s:.1f}" for s in r["score_cpu_ms"]) + ")") if r["score_ms"] else "-"
            print(f"  ({condition:>2}) rep {r['rep']}: median {r['median_ms']:.2f} ms | {milestones} | "
                  f"excess {r['excess_ms']:.1f} ms | "
                  f"max {r['max']:.2f}x@{r['max_step']} | log+step mean {r['calls_mean_us']:.0f} us, "
                  f"max {r['calls_max_ms']:.2f} ms | score ms {scores} | complete {r['complete_ms']:.2f} ms | "
                  f"close {r['exit_s']:.2f} s | {r['deliveries']}")
    print(f"\ntotal benchmark time {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
