"""B2 end-of-run cost: from the last step to process exit, ours (flush, analysis, completion) vs. the stock
MLflowCallback.

Each run is a fresh Python process (``python -m bench.end_of_run CONDITION STORE URL``) that feeds
transformers' callbacks ``STEPS`` Trainer log entries of 4 metrics (loss, grad_norm, learning_rate,
epoch), one per step, with ``STEP_SECONDS`` of sleep per step standing in for a fast GPU step (the GIL is
free meanwhile, as while CUDA works). It prints the wall-clock time of its last step; the parent notes
when the process has exited. The difference is the end-of-run cost:

  stock  transformers' ``MLflowCallback`` (``report_to="mlflow"``), which logs every entry with
         ``mlflow.log_metrics(..., synchronous=False)``; at the end its queue must drain before exit
  ours   ``MlflowMetricsCallback`` (``JobRunLogger`` batches) + notifications to a webhook on 127.0.0.1; at
         the end what ``run_training`` does: flush, ``analyze_run`` (score the points this process sent,
         which are the whole run here, write tags/artifacts/plot), the completion message with the score
         and the loss-curve PNG, closing the logger and the run; ``skip_final_gc_at_exit`` as in the job

Both log to a sqlite store of their own. Goals (printed, never asserted): ours <= 5 s, and at least 10x
faster than the stock callback's end.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("BENCH_END_STEPS", "10000"))
STEP_SECONDS = 0.002
REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))


def _entries():
    for step in range(1, STEPS + 1):
        yield step, {"loss": 2.0 / (1 + step / 500) + 0.3, "grad_norm": 1.0 + (step % 7) / 10,
                     "learning_rate": 1e-3 * (1 - step / STEPS), "epoch": step / 1000}


def child(condition: str, store: str, webhook: str) -> None:
    """One run in this process; prints 'last-step <unix time>' when the last step is done."""
    import mlflow
    from transformers import TrainerControl, TrainerState, TrainingArguments

    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("bench-end")
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none")
    state, control = TrainerState(), TrainerControl()
    state.is_world_process_zero = True
    state.max_steps = STEPS
    if condition == "stock":
        from transformers.integrations import MLflowCallback

        callbacks = [MLflowCallback()]
    else:
        from mlflow.tracking import MlflowClient

        from notify.delivery import Notifier, load_channels
        from tracking.callbacks import MlflowMetricsCallback, NotificationCallback
        from tracking.monitor import TrainingMonitor
        from tracking.train import JobRunLogger, skip_final_gc_at_exit

        skip_final_gc_at_exit()  # as run_training does first
        client = MlflowClient()
        run_id = mlflow.start_run().info.run_id
        notifier = Notifier(load_channels(webhook), send_from_helper=True)  # as the job
        logger = JobRunLogger(client, run_id, unsent_path=Path(args.output_dir) / "unsent.jsonl")
        notifications = NotificationCallback(lambda total, start: TrainingMonitor(notifier, total, start_step=start),
                                             "bench", "bench")
        callbacks = [MlflowMetricsCallback(logger), notifications]
    for callback in callbacks:
        callback.on_train_begin(args, state, control, model=None)
    for step, logs in _entries():
        time.sleep(STEP_SECONDS)
        state.global_step = step
        for callback in callbacks:
            callback.on_step_end(args, state, control)
            callback.on_log(args, state, control, logs=dict(logs))
    print(f"last-step {time.time():.6f}", flush=True)
    for callback in callbacks:
        callback.on_train_end(args, state, control)
    if condition == "ours":
        import tracking.analyze
        from tracking.analyze import analyze_run
        from tracking.train import own_history

        reads = []  # whether the analysis read the history back from MLflow (it should not have to here)
        read_history = tracking.analyze.read_history
        tracking.analyze.read_history = lambda *a: reads.append(1) or read_history(*a)

        phases = {}
        clock = time.perf_counter()

        def phase(name):
            nonlocal clock
            now = time.perf_counter()
            phases[name] = now - clock
            clock = now

        logger.flush()
        phase("flush")
        # As run_training: the points this process sent are the run's whole history (a new run, nothing
        # failed), so they are scored without reading them back; the loss curve goes with the message.
        png = Path(args.output_dir) / "loss_curve.png"
        analysis = analyze_run(client, run_id, logged=own_history(logger, notifications.monitor, fresh_run=True),
                               loss_curve_png=png)
        phase("analysis")
        notifications.monitor.complete(analysis, None, [str(png)])
        notifications.monitor.close()
        phase("completion")
        logger.close()
        mlflow.end_run()
        phase("end_run")
        print("phases " + " ".join(f"{k}={v:.2f}s" for k, v in phases.items())
              + f" score={analysis.quality_score:g} read_back={len(reads)}", flush=True)


def run_once(condition: str, folder: Path, webhook: str) -> tuple[float, float, str]:
    """(loop seconds, end-of-run seconds, phases of the end) of one child process."""
    store = f"sqlite:///{folder / f'{condition}-{time.monotonic_ns()}.db'}"
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "bench.end_of_run", condition, store, webhook], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
    process.wait()
    exited = time.time()
    last = float(next(line.split()[1] for line in lines if line.startswith("last-step")))
    if process.returncode != 0:
        raise RuntimeError(f"{condition} run exited with {process.returncode}: {''.join(lines)[-500:]}")
    phases = next((line.split(" ", 1)[1].strip() for line in lines if line.startswith("phases")), "")
    return last - started, exited - last, phases


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import mlflow
    import transformers
    from receivers import HTTPReceiver

    now = datetime.datetime.now().astimezone()
    print(f"date: {now:%Y-%m-%d %H:%M %Z}   machine: os.cpu_count()={os.cpu_count()}  {platform.machine()}  "
          f"{platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}  mlflow {mlflow.__version__}  transformers {transformers.__version__}")
    print(f"{STEPS} steps x 4 metrics, {STEP_SECONDS * 1000:g} ms sleep per step, sqlite store per run; "
          f"{REPEATS} repeats, interleaved")
    ends: dict[str, list[float]] = {"stock": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp, HTTPReceiver() as webhook:
        for rep in range(REPEATS):
            for condition in (("stock", "ours") if rep % 2 == 0 else ("ours", "stock")):
                loop, end, phases = run_once(condition, Path(tmp), webhook.url())
                ends[condition].append(end)
                print(f"  rep {rep + 1} {condition:<5}  start+loop {loop:6.1f} s  "
                      f"last step -> exit {end:6.2f} s  {phases}", flush=True)
        completions = [b for b in webhook.bodies if "Complete" in b.get("title", "")]
    stock, ours = statistics.median(ends["stock"]), statistics.median(ends["ours"])
    print()
    print(f"{'':<8} {'last step -> exit (median)':>28}")
    print(f"{'stock':<8} {stock:26.2f} s")
    print(f"{'ours':<8} {ours:26.2f} s   (includes analysis + completion message; {len(completions)} sent)")
    print(f"speed-up {stock / ours:.1f}x (goal >= 10x: {'PASS' if stock / ours >= 10 else 'MISS'}); "
          f"ours {ours:.2f} s (goal < 5 s: {'PASS' if ours < 5 else 'MISS'})")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        sys.path.insert(0, str(REPO))
        child(*sys.argv[1:])
    else:
        main()
