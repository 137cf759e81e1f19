"""B7: the cost of sample outputs at milestones (causal-lm): milestone-step time vs the median step.

A real ``Trainer`` (tracking.train.build_trainer) fine-tunes a tiny randomly initialised GPT-2 (2 layers,
width 64, the built-in model's tokenizer; built in a temporary folder, nothing downloaded) on the built-in
support tickets as causal-lm, ``STEPS`` steps, with ``tracking.samples.SamplingCallback`` generating the
default 8 eval prompts x 32 new tokens at 25/50/75/100 %. A timing callback placed after it records the
wall time of each step including its callbacks (what the loop really waits for). The same run without
sampling (``samples=0``) is the baseline. Nothing is logged to MLflow (the table append runs on a
background thread in the job anyway).

Reported: the median step, each milestone step (ms and x median), the sampling time per milestone, and the
whole cost as a share of the run. The notification budget (bench B4: a milestone step <= 1.1x the median) is
not what sampling can meet, since it runs the model 8 x 32 more times; it is documented instead, with
``samples=0`` to turn it off (docs/evaluation.md).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STEPS = 40
SAMPLES = 8
SAMPLE_TOKENS = 32


def _tiny_model(folder: Path) -> str:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tracking.model import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=2,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(model: str, out: Path, samples: int) -> tuple[list[float], list[tuple[int, float]]]:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    from tracking.config import TrainConfig
    from tracking.data import load_text_data
    from tracking.model import load_lora_model
    from tracking.samples import SamplingCallback, load_sample_prompts
    from tracking.train import build_trainer

    config = TrainConfig(model=model, task="causal-lm", max_steps=STEPS, batch_size=8, max_length=64,
                         eval_fraction=0.05, eval_steps=STEPS, logging_steps=10, samples=samples,
                         sample_tokens=SAMPLE_TOKENS, output_dir=str(out))
    data = load_text_data(config)
    loaded = load_lora_model(config, None)
    prompts = load_sample_prompts(config, data.eval_texts)
    sampler = (SamplingCallback(prompts, loaded.tokenizer, SAMPLE_TOKENS, config.sample_seconds, config.max_length)
               if prompts else None)
    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer = build_trainer(config, data, loaded, callbacks=[*([sampler] if sampler else []), Timer()])
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    steps = [b - a for a, b in zip(ends, ends[1:])]
    return steps, (sampler.timings if sampler else [])


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    print(f"{datetime.date.today()} | Python {platform.python_version()} | torch {torch.__version__} | "
          f"{os.cpu_count()} CPU(s) | {STEPS} steps, {SAMPLES} prompts x {SAMPLE_TOKENS} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model(Path(tmp) / "tiny-gpt2")
        base, _ = _run(model, Path(tmp) / "base", samples=0)
        steps, timings = _run(model, Path(tmp) / "sampled", samples=SAMPLES)
    median = statistics.median(steps)
    print(f"without sampling: median step {median * 1000:.1f} ms (baseline run: {statistics.median(base) * 1000:.1f} "
          f"ms), run {sum(base):.2f} s")
    print(f"{'step':>6} {'step ms':>9} {'x median':>9} {'sampling ms':>12}")
    for step, seconds in timings:
        took = steps[step - 1]
        print(f"{step:>6} {took * 1000:>9.1f} {took / median:>9.1f} {seconds * 1000:>12.1f}")
    extra = sum(seconds for _, seconds in timings)
    print(f"sampling: {extra:.2f} s in all, {extra / len(timings) * 1000:.0f} ms per milestone "
          f"({extra / sum(steps) * 100:.0f}% of this {STEPS}-step run of {sum(steps):.2f} s); "
          f"budget 1.1x median step: {'PASS' if max(steps[s - 1] for s, _ in timings) <= 1.1 * median else 'MISS'} "
          "(documented; samples=0 turns sampling off)")


if __name__ == "__main__":
    main()
