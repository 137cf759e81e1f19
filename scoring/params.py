"""Read a run's hyperparameters whatever named them.

MLflow stores params as strings, and the same knob goes by different names: our MLproject says
``epochs`` and ``lora_r``, Hugging Face's Trainer logs ``num_train_epochs``, a peft config says ``r``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate", "lr"),
    "epochs": ("epochs", "num_train_epochs", "max_epochs"),
    "max_steps": ("max_steps",),
    "lora_r": ("lora_r", "r", "lora_rank"),
    "lora_alpha": ("lora_alpha",),
    "lora_dropout": ("lora_dropout",),
    "weight_decay": ("weight_decay",),
    "max_grad_norm": ("max_grad_norm", "gradient_clip_val"),
    "warmup_ratio": ("warmup_ratio",),
    "warmup_steps": ("warmup_steps",),
    "num_labels": ("num_labels",),
}


KNOB_OF: dict[str, str] = {alias: knob for knob, aliases in ALIASES.items() for alias in aliases}


def _whole(x: float) -> bool:
    return float(x).is_integer()


# The values each knob accepts (Hugging Face's TrainingArguments, peft's LoraConfig, our MLproject): a suggested
# value must lie inside, as shown to the user and as stored.
VALID: dict[str, Callable[[float], bool]] = {
    "learning_rate": lambda x: x > 0,
    "epochs": lambda x: x > 0,
    "max_steps": lambda x: x >= 1 and _whole(x),
    "lora_r": lambda x: x >= 1 and _whole(x),
    "lora_alpha": lambda x: x >= 1 and _whole(x),
    "lora_dropout": lambda x: 0 <= x < 1,
    "weight_decay": lambda x: x >= 0,
    "max_grad_norm": lambda x: x > 0,
    "warmup_ratio": lambda x: 0 <= x <= 1,
    "warmup_steps": lambda x: x >= 0 and _whole(x),
    "num_labels": lambda x: x >= 1 and _whole(x),
}


def knob_of(name: str) -> str:
    """The knob a param name stands for (``num_train_epochs`` -> ``epochs``); unknown names stand for themselves."""
    return KNOB_OF.get(name, name)


def is_valid(knob: str, value: Any) -> bool:
    """Whether ``value`` is a value ``knob`` accepts. Booleans suit only flags (knobs without a numeric range);
    numbers must be finite and inside the knob's range."""
    knob = knob_of(knob)
    if isinstance(value, bool):
        return knob not in VALID
    try:
        number = float(value)
    except (TypeError, ValueError):
        return knob not in VALID
    return math.isfinite(number) and VALID.get(knob, lambda x: True)(number)


class Hyperparameters:
    """Case-sensitive alias lookup over a params mapping, returning floats where the value parses."""

    def __init__(self, params: Mapping[str, Any] | None):
        self._params = dict(params or {})

    def name_of(self, knob: str) -> str:
        """The name the run itself uses for ``knob`` (so suggestions speak the run's language)."""
        for alias in ALIASES.get(knob, (knob,)):
            if alias in self._params:
                return alias
        return knob

    def number(self, knob: str) -> float | None:
        for alias in ALIASES.get(knob, (knob,)):
            if alias in self._params:
                try:
                    value = float(self._params[alias])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    return value
        return None

    def classes(self) -> float | None:
        """How many classes a single-label classifier chooses among: ``num_labels``, else the size of the
        ``id2label`` mapping that Hugging Face's MLflowCallback logs from the model config. None for
        multi-label problems, where chance level is not ln K."""
        if str(self._params.get("problem_type", "")) == "multi_label_classification":
            return None
        count = self.number("num_labels")
        if count is None and "id2label" in self._params:
            try:
                mapping = ast.literal_eval(str(self._params["id2label"]))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                mapping = None
            count = float(len(mapping)) if isinstance(mapping, dict) else None
        return count if count is not None and count >= 2 else None
