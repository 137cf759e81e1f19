"""Load the user's text data (CSV, JSONL, a Hugging Face dataset, or the built-in set) and split it.

Everything here runs before a model is loaded, so a missing file or a wrong column fails in a second
with a message that says what to fix, not after minutes of setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import DEFAULT_DATA, ConfigError, TrainConfig, usable_path

BUILTIN_DATA = {DEFAULT_DATA: Path(__file__).parent / "data" / "support_tickets.csv"}
MIN_EXAMPLES = 4


@dataclass(frozen=True)
class TextData:
    """Texts (and integer labels for classification), split into train and eval."""

    train_texts: list[str]
    eval_texts: list[str]
    train_labels: list[int] | None
    eval_labels: list[int] | None
    label_names: list[str] | None
    source: str


def resolve_data_source(data: str) -> Path | str:
    """A local path for built-in or file data; the name itself for a Hugging Face dataset."""
    if data in BUILTIN_DATA:
        return BUILTIN_DATA[data]
    if data.startswith("builtin:"):
        raise ConfigError(f"unknown built-in data {data!r}; built-in: {', '.join(BUILTIN_DATA)}")
    path = usable_path(data, "data")
    if path.suffix.lower() in (".csv", ".jsonl", ".json") or path.exists():
        if path.is_dir():
            raise ConfigError(f"data {data!r} is a folder; pass a CSV or JSONL file with a `text` column")
        if not path.is_file():
            raise ConfigError(f"data file {data!r} does not exist; pass a CSV or JSONL file with a `text` column")
        return path
    return data


def _read_table(source: Path | str) -> pd.DataFrame:
    if isinstance(source, Path):
        suffix = source.suffix.lower()
        try:
            if suffix == ".csv":
                return pd.read_csv(source)
            if suffix in (".jsonl", ".json"):
                return pd.read_json(source, lines=suffix == ".jsonl")
        except ValueError as exc:
            raise ConfigError(f"could not read {source}: {exc}") from None
        raise ConfigError(f"data file {source} must end in .csv or .jsonl (got {suffix or 'no extension'})")
    return _read_hub_dataset(source)


def _read_hub_dataset(name: str) -> pd.DataFrame:
    try:
        import datasets  # optional: only for data named on the Hugging Face Hub
    except ImportError:
        raise ConfigError(
            f"data {name!r} is not a local file; to load it from the Hugging Face Hub, `pip install datasets` "
            "(and have network access), or pass a CSV/JSONL file"
        ) from None
    try:
        loaded = datasets.load_dataset(name, split="train")
    except Exception as exc:  # the hub raises many types; the user needs the name and the reason
        raise ConfigError(f"could not load Hugging Face dataset {name!r}: {exc}".splitlines()[0]) from None
    return loaded.to_pandas()


def load_text_data(config: TrainConfig) -> TextData:
    source = resolve_data_source(config.data)
    table = _read_table(source)
    classification = config.task == "classification"
    needed = ["text", "label"] if classification else ["text"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(
            f"data {config.data!r} has no {' or '.join(repr(m) for m in missing)} column (columns: "
            f"{', '.join(map(str, table.columns))}); {config.task} needs {', '.join(needed)}"
        )
    table = table.dropna(subset=needed)
    table = table[table["text"].astype(str).str.strip() != ""]
    if len(table) < MIN_EXAMPLES:
        raise ConfigError(f"data {config.data!r} has {len(table)} usable rows; at least {MIN_EXAMPLES} are needed")
    shuffled = table.sample(frac=1.0, random_state=config.seed).reset_index(drop=True)
    n_eval = int(round(len(shuffled) * config.eval_fraction))
    if config.eval_fraction > 0:
        n_eval = max(1, min(n_eval, len(shuffled) - 1))
    eval_part, train_part = shuffled.iloc[:n_eval], shuffled.iloc[n_eval:]
    labels = names = None
    if classification:
        names = sorted(shuffled["label"].astype(str).unique())
        if len(names) < 2:
            raise ConfigError(
                f"data {config.data!r} has a single label ({names[0]!r}); classification needs at least 2")
        index = {name: i for i, name in enumerate(names)}
        labels = (train_part["label"].astype(str).map(index).tolist(),
                  eval_part["label"].astype(str).map(index).tolist())
    return TextData(
        train_texts=train_part["text"].astype(str).tolist(),
        eval_texts=eval_part["text"].astype(str).tolist(),
        train_labels=labels[0] if labels else None,
        eval_labels=labels[1] if labels else None,
        label_names=names,
        source=str(source),
    )
