"""Sample outputs during training (causal-lm): a fixed set of held-out prompts, generated at each milestone.

At 25, 50, 75 and 100% of the steps the current adapter continues the same prompts (greedy, at most
``sample_tokens`` new tokens, the whole milestone bounded by ``sample_seconds``), and the rows (step,
milestone, prompt, reference, output) are appended to the run's ``samples/samples.json`` table with
``MlflowClient.log_table`` (the run's Artifacts view shows it as a table; ``mlflow.load_table`` reads it).

Generation needs the weights the loop is updating, so it runs on the training thread between two steps
(the Trainer has no other place for it); logging the table runs on a background thread. The cost is the
milestone steps' extra time: bench/RESULTS.md B7 measures it; ``samples=0`` turns sampling off.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from notify.events import MILESTONES

from .config import ConfigError, TrainConfig, usable_path

log = logging.getLogger(__name__)

SAMPLES_TABLE = "samples/samples.json"


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    reference: str = ""  # what the data says follows the prompt; empty when unknown


def split_for_sample(text: str) -> SamplePrompt:
    """An eval text as a prompt (its first half, by words) and the reference continuation (the rest)."""
    words = text.split()
    if len(words) < 2:
        return SamplePrompt(text.strip(), "")
    half = len(words) // 2
    return SamplePrompt(" ".join(words[:half]), " ".join(words[half:]))


def load_sample_prompts(config: TrainConfig, eval_texts: list[str]) -> list[SamplePrompt]:
    """The prompts sampled at each milestone: ``config.samples`` of them from ``sample_prompts`` (one prompt
    a line, or a CSV/JSONL file with a ``prompt`` column and an optional ``reference`` one) or, without a
    file, from the eval split. Empty for classification or ``samples=0``."""
    if config.task != "causal-lm" or config.samples <= 0:
        return []
    if not config.sample_prompts.strip():
        return [split_for_sample(t) for t in eval_texts if t.strip()][: config.samples]
    path = usable_path(config.sample_prompts, "sample_prompts")
    if not path.is_file():
        raise ConfigError(f"sample_prompts file {config.sample_prompts!r} does not exist; pass a file with one "
                          "prompt a line (or a CSV/JSONL file with a `prompt` column)")
    prompts = _read_prompts(path)
    if not prompts:
        raise ConfigError(f"sample_prompts file {config.sample_prompts!r} holds no prompt; put one prompt a line")
    return prompts[: config.samples]


def _read_prompts(path: Path) -> list[SamplePrompt]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        return [SamplePrompt(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        table = pd.read_csv(path) if suffix == ".csv" else pd.read_json(path, lines=True)
    except ValueError as exc:
        raise ConfigError(f"could not read sample_prompts file {str(path)!r}: {exc}") from None
    if "prompt" not in table.columns:
        raise ConfigError(f"sample_prompts file {str(path)!r} has no `prompt` column (columns: "
                          f"{', '.join(map(str, table.columns))}); add one, or use a text file with one prompt a line")
    references = table["reference"] if "reference" in table.columns else [""] * len(table)
    return [SamplePrompt(str(p).strip(), "" if pd.isna(r) else str(r).strip())
            for p, r in zip(table["prompt"], references) if not pd.isna(p) and str(p).strip()]


def generate_outputs(model, tokenizer, prompts: list[str], max_new_tokens: int, deadline: float,
                     max_length: int = 512) -> list[str | None]:
    """Greedy continuations of ``prompts`` (new text only); None for a prompt not reached before ``deadline``
    (``time.monotonic()``). The model is put in eval mode (no dropout) and back as it was."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str | None] = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                left = deadline - time.monotonic()
                if left <= 0:
                    outputs.append(None)
                    continue
                encoded = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=max_length).to(device)
                ids = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, max_time=left,
                                     pad_token_id=tokenizer.pad_token_id)
                new = ids[0, encoded["input_ids"].shape[1]:]
                outputs.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    finally:
        if was_training:
            model.train()
    return outputs


class SamplingCallback(TrainerCallback):
    """Generates the sample prompts at each milestone step (main process only) and hands the rows to
    ``log_rows`` on a background thread. ``rows`` keeps every row, ``timings`` (step, seconds) each pass."""

    def __init__(self, prompts: list[SamplePrompt], tokenizer, max_new_tokens: int, seconds: float,
                 max_length: int, log_rows=None):
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.seconds = seconds
        self.max_length = max_length
        self.log_rows = log_rows
        self.rows: list[dict] = []
        self.timings: list[tuple[int, float]] = []
        self._done: set[int] = set()
        self._total = 0
        self._logging = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peft-studio-samples")
        self._pending: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._total = max(int(state.max_steps), 1)
        # a run resumed from a checkpoint does not sample the milestones it had passed
        self._done = {m for m in MILESTONES if state.global_step * 100 >= m * self._total and state.global_step}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or not self.prompts:
            return
        due = [m for m in MILESTONES if m not in self._done and state.global_step * 100 >= m * self._total]
        if not due:
            return
        self._done.update(due)
        self.sample(model, state.global_step, max(due))

    def sample(self, model, step: int, milestone: int) -> list[dict]:
        started = time.monotonic()
        outputs = generate_outputs(model, self.tokenizer, [p.prompt for p in self.prompts], self.max_new_tokens,
                                   started + self.seconds, self.max_length)
        self.timings.append((step, time.monotonic() - started))
        skipped = sum(o is None for o in outputs)
        if skipped:
            log.warning("sampling at step %d reached %d of %d prompts within sample_seconds=%g", step,
                        len(outputs) - skipped, len(outputs), self.seconds)
        rows = [{"step": step, "milestone": milestone, "prompt": p.prompt, "reference": p.reference, "output": o}
                for p, o in zip(self.prompts, outputs) if o is not None]
        self.rows.extend(rows)
        if rows and self.log_rows is not None:
            self._pending.append(self._logging.submit(self._log, rows))
        return rows

    def _log(self, rows: list[dict]) -> None:
        try:
            self.log_rows(pd.DataFrame(rows, columns=["step", "milestone", "prompt", "reference", "output"]))
        except Exception as exc:  # samples are a view of the run; never a reason to stop it
            log.warning("could not log the samples table: %s", exc)

    def close(self) -> None:
        """Wait until every table append has gone out."""
        self._logging.shutdown(wait=True)

    # -- what the end of the run reads -----------------------------------------------------------------
    def first_and_last(self) -> tuple[dict, dict] | None:
        """The first prompt's earliest and latest rows (for the completion message)."""
        if not self.rows:
            return None
        prompt = self.rows[0]["prompt"]
        mine = [r for r in self.rows if r["prompt"] == prompt]
        return mine[0], mine[-1]

    def final_rows(self) -> list[dict]:
        """The rows of the latest sampling pass (what the judge and the overlap metric read)."""
        if not self.rows:
            return []
        last = self.rows[-1]["step"]
        return [r for r in self.rows if r["step"] == last]


def make_sampler(config: TrainConfig, prompts: list[SamplePrompt], tokenizer, client, run_id: str):
    """The sampling callback for a tracked causal-lm job, or None when nothing is to be sampled."""
    if not prompts:
        return None
    return SamplingCallback(prompts, tokenizer, config.sample_tokens, config.sample_seconds, config.max_length,
                            log_rows=lambda frame: client.log_table(run_id, frame, SAMPLES_TABLE))
