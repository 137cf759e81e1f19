"""B1 step overhead: the training job's median step with tracking + notifications on, against no tracking.

Two jobs, each trained with transformers' ``Trainer`` exactly as ``tracking.train.build_trainer`` builds it:

  default   the built-in job (all-MiniLM-L6-v2 + LoRA on the support tickets, batch 16, logging every 2 steps)
  tiny      a 2-layer, 32-wide GPT-2 (random weights, the built-in tokenizer) as causal-lm, batch 8,
            logging every step: steps of a few milliseconds, where any per-step cost shows

and two conditions, interleaved and repeated ``REPEATS`` times in one process:

  off       no callbacks but the step timer (``report_to="none"``): no tracking at all
  on        our metrics callback (``RunLogger`` to a sqlite store) + notifications (``TrainingMonitor`` with a
            ``Notifier`` posting to a webhook on 127.0.0.1) + the step timer

A step is the time between two consecutive ``on_step_begin`` calls, so it includes the logging that
follows the optimizer step. Goals (printed, never asserted): median(on)/median(off) <= 1.02 on the
default job, <= 1.10 on the tiny one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
WARMUP_STEPS = 3
GOALS = {"default": 1.02, "tiny": 1.10}


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begins: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def steps_ms(self) -> list[float]:
            gaps = [(b - a) * 1000 for a, b in zip(self.begins, self.begins[1:])]
            return gaps[WARMUP_STEPS:]

    return StepTimer()


def _tiny_model(folder: Path) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tracking.model import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _configs(folder: Path) -> dict:
    from tracking.config import TrainConfig

    notes = folder / "notes.jsonl"
    notes.write_text("\n".join(json.dumps({"text": f"note {i}: the cache warms up in {i % 7} seconds"})
                               for i in range(400)))
    return {
        "default": TrainConfig(max_steps=40, eval_fraction=0.0, output_dir=str(folder / "out-default")),
        "tiny": TrainConfig(model=str(_tiny_model(folder / "tiny")), data=str(notes), task="causal-lm", max_steps=300,
                            logging_steps=1, batch_size=8, max_length=32, eval_fraction=0.0,
                            output_dir=str(folder / "out-tiny")),
    }


def run_once(config, tracked: bool, webhook_url: str, store: str) -> list[float]:
    """One training run; returns its step times in ms."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from notify.delivery import Notifier, load_channels
    from tracking.callbacks import MlflowMetricsCallback, NotificationCallback
    from tracking.data import load_text_data
    from tracking.model import load_lora_model
    from tracking.monitor import TrainingMonitor
    from tracking.run_logger import RunLogger
    from tracking.train import build_trainer

    def quiet(trainer):
        """No progress bar or printed logs: the terminal is not what is measured."""
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        return trainer

    data = load_text_data(config)
    loaded = load_lora_model(config, data.label_names)
    timer = _step_timer()
    if not tracked:
        quiet(build_trainer(config, data, loaded, [timer])).train()
        return timer.steps_ms()
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    found = client.get_experiment_by_name("bench")
    run_id = client.create_run(found.experiment_id if found else client.create_experiment("bench")).info.run_id
    notifier = Notifier(load_channels(webhook_url), send_from_helper=True)  # as the job
    logger = RunLogger(client, run_id, unsent_path=Path(config.output_dir) / "unsent.jsonl")
    notifications = NotificationCallback(lambda total, start: TrainingMonitor(notifier, total, start_step=start),
                                         config.model, config.data)
    quiet(build_trainer(config, data, loaded, [MlflowMetricsCallback(logger), notifications, timer])).train()
    logger.close()
    notifications.monitor.complete()
    notifications.monitor.close()
    client.set_terminated(run_id)
    return timer.steps_ms()


def main() -> None:
    import torch
    import transformers
    from receivers import HTTPReceiver

    now = datetime.datetime.now().astimezone()
    print(f"date: {now:%Y-%m-%d %H:%M %Z}   machine: os.cpu_count()={os.cpu_count()}  {platform.machine()}  "
          f"{platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}  torch {torch.__version__} ({torch.get_num_threads()} threads)  "
          f"transformers {transformers.__version__}")
    print(f"{REPEATS} repeats per job and condition, interleaved (off, on, on, off, ...) after one untimed warm-up "
          f"run per job; first {WARMUP_STEPS} steps of each run dropped")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, HTTPReceiver() as webhook:
        folder = Path(tmp)
        store = f"sqlite:///{folder / 'mlflow.db'}"
        for job, config in _configs(folder).items():
            run_once(config, False, webhook.url(), store)  # warm-up (first-run allocations, caches): not counted
            for rep in range(REPEATS):
                for condition in (("off", "on") if rep % 2 == 0 else ("on", "off")):
                    steps = run_once(config, condition == "on", webhook.url(), store)
                    median = statistics.median(steps)
                    results.setdefault((job, condition), []).append(median)
                    print(f"  {job:<8} rep {rep + 1} {condition:<3}  {len(steps)} steps  median {median:7.2f} ms  "
                          f"p90 {statistics.quantiles(steps, n=10)[-1]:7.2f} ms", flush=True)
        messages = len(webhook.bodies)
    print()
    print(f"{'job':<8} {'off (ms)':>9} {'on (ms)':>9} {'ratio':>6} {'goal':>6}  verdict")
    for job, goal in GOALS.items():
        off = statistics.median(results[(job, "off")])
        on = statistics.median(results[(job, "on")])
        ratio = on / off
        print(f"{job:<8} {off:9.2f} {on:9.2f} {ratio:6.3f} {goal:6.2f}  {'PASS' if ratio <= goal else 'MISS'}")
    print(f"(medians of the per-run median step; the webhook received {messages} messages)")


if __name__ == "__main__":
    main()
