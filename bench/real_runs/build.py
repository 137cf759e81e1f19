"""Rebuild the real-run benchmark from its sources: public `trainer_state.json` files.

Each entry of ``sources.json`` names a public repository, the path of a Hugging Face ``trainer_state.json``
in it and the commit it was read at. Its ``log_history`` is what transformers' ``MLflowCallback`` logs to
MLflow: every numeric key of every log entry, at the entry's ``step``. This script turns each file into
``runs/<id>.json`` (provenance, params, and the metric history as ``key -> [[step, value], ...]``).

    python -m bench.real_runs.build --raw-dir DIR      # DIR/<id>.json holds each source file as downloaded
    python -m bench.real_runs.build                    # downloads each file at its commit (needs a network)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources.json"
RUNS = HERE / "runs"

# Throughput and bookkeeping numbers the Trainer logs beside the losses; they say nothing about quality.
SKIPPED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "total_flos", "num_tokens",
                    "num_input_tokens_seen")
# Top-level fields of trainer_state.json that a run's params would carry (TrainingArguments logged by MLflow).
STATE_PARAMS = ("num_train_epochs", "max_steps", "logging_steps", "eval_steps", "save_steps", "train_batch_size")


def raw_url(source: dict) -> str:
    return f"https://raw.githubusercontent.com/{source['repo']}/{source['commit']}/{source['path']}"


def load_state(source: dict, raw_dir: Path | None) -> dict:
    if raw_dir is not None:
        text = (raw_dir / f"{source['id']}.json").read_text(encoding="utf-8")
    else:
        with urllib.request.urlopen(raw_url(source), timeout=60) as response:  # noqa: S310 (a fixed https host)
            text = response.read().decode("utf-8")
    return json.loads(text)


def history_of(state: dict) -> dict[str, list[list[float]]]:
    """``key -> [[step, value], ...]`` for every numeric value the MLflowCallback would have logged."""
    metrics: dict[str, list[list[float]]] = {}
    for entry in state.get("log_history", []):
        step = entry.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        for key, value in entry.items():
            if key == "step" or key.endswith(SKIPPED_SUFFIXES):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics.setdefault(key, []).append([int(step), _compact(float(value))])
    return metrics


def _compact(value: float) -> float:
    return value if not math.isfinite(value) else float(f"{value:.6g}")


def params_of(state: dict, source: dict) -> dict:
    params = {name: state[name] for name in STATE_PARAMS if state.get(name) not in (None, 0, "")}
    params.update(source.get("params", {}))
    return {name: str(value) for name, value in params.items()}  # MLflow stores params as strings


def build(raw_dir: Path | None, only: set[str] | None = None, sources_file: Path = SOURCES,
          out: Path = RUNS) -> int:
    sources = json.loads(sources_file.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    built = 0
    for source in sources:
        if only and source["id"] not in only:
            continue
        state = load_state(source, raw_dir)
        run = {
            "id": source["id"],
            "source": {k: source.get(k) for k in ("repo", "path", "commit", "license")},
            **{k: source.get(k) for k in ("task", "model", "method", "precision", "split")},
            "params": params_of(state, source),
            "metrics": history_of(state),
        }
        (out / f"{source['id']}.json").write_text(json.dumps(run, separators=(",", ":")) + "\n", encoding="utf-8")
        built += 1
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_runs.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", type=Path, help="folder of downloaded files named <id>.json (default: download)")
    parser.add_argument("--sources", type=Path, default=SOURCES, help="the list of sources (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RUNS, help="where runs/<id>.json go (default: %(default)s)")
    parser.add_argument("ids", nargs="*", help="rebuild only these runs")
    args = parser.parse_args(argv)
    count = build(args.raw_dir, set(args.ids) or None, args.sources, args.out)
    print(f"built {count} run(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
