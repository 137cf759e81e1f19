"""Real-run benchmark: the analyzer's verdicts against blind human labels of published training runs.

    python -m bench real-runs            # print agreement per verdict and every disagreement
    python -m bench real-runs --write    # also write the table into bench/RESULTS.md and docs/scoring.md

Each run in ``runs/`` is a real ``trainer_state.json`` history (provenance in ``sources.json``), analyzed
exactly as ``peft-studio analyze`` would analyze it after transformers' MLflowCallback logged it. Each
label in ``labels.json`` was written from the run's plot and numbers before the analyzer was run on it
(criteria: ``LABELING.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VERDICTS = ("learned", "converged", "unstable", "overfit", "band", "top_concern")
# The figures the suite holds the analyzer to (tests/test_real_runs.py).
GOALS = {"overall": 0.90, "top_concern": 0.85, "each": 0.80}


def load_runs(folder: Path = HERE / "runs") -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def load_labels(path: Path = HERE / "labels.json") -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def history_frame(run: dict) -> pd.DataFrame:
    """The run's metrics as MLflow returns them: one row per logged point (key, step, value)."""
    rows = [(key, step, value) for key, points in run["metrics"].items() for step, value in points]
    return pd.DataFrame(rows, columns=["key", "step", "value"])


@dataclass
class Outcome:
    run_id: str
    split: str
    task: str
    answers: dict[str, str] = field(default_factory=dict)  # the analyzer's, in the labels' words
    agree: dict[str, bool] = field(default_factory=dict)
    score: float | None = None
    error: str = ""


def analyzer_answers(analysis) -> dict[str, str]:
    v = analysis.verdicts
    unstable = v["unstable"].answer
    return {
        "learned": v["learned"].answer,
        "converged": v["converged"].answer,
        "unstable": "no" if unstable == "not_measured" else unstable,
        "overfit": v["overfit"].answer,
        "band": analysis.overall_assessment.split(" ")[0],
        "top_concern": analysis.top_concern,
    }


def matches(verdict: str, answer: str, label: dict) -> bool:
    if verdict == "band":
        return answer in label["acceptable_bands"]
    if verdict == "top_concern":
        return answer in label.get("acceptable_concerns", [label["top_concern"]])
    return answer == label[verdict]


def evaluate(runs: dict[str, dict], labels: dict[str, dict]) -> list[Outcome]:
    from scoring import analyze_history

    outcomes = []
    for run_id, run in runs.items():
        label = labels[run_id]
        outcome = Outcome(run_id, run.get("split") or "dev", run.get("task") or "")
        try:
            analysis = analyze_history(history_frame(run), run["params"])
        except Exception as exc:  # a crash is a result of the benchmark, reported per run
            outcome.error = f"{type(exc).__name__}: {exc}"
            outcome.agree = {verdict: False for verdict in VERDICTS}
        else:
            outcome.score = analysis.quality_score
            outcome.answers = analyzer_answers(analysis)
            outcome.agree = {verdict: matches(verdict, outcome.answers[verdict], label) for verdict in VERDICTS}
        outcomes.append(outcome)
    return outcomes


def agreement(outcomes: list[Outcome]) -> dict[str, float]:
    table = {verdict: sum(o.agree[verdict] for o in outcomes) / len(outcomes) for verdict in VERDICTS}
    table["overall"] = sum(table[verdict] for verdict in VERDICTS) / len(VERDICTS)
    return table


def dead_runs_rated_well(outcomes: list[Outcome], labels: dict[str, dict]) -> list[str]:
    return [o.run_id for o in outcomes
            if labels[o.run_id]["learned"] == "no" and o.answers.get("band") in ("Excellent", "Good")]


def markdown(outcomes: list[Outcome], labels: dict[str, dict],
             list_splits: tuple[str, ...] = ("dev", "holdout")) -> str:
    splits = {"all": outcomes}
    for name in sorted({o.split for o in outcomes}):
        splits[name] = [o for o in outcomes if o.split == name]
    lines = ["| runs | " + " | ".join(VERDICTS) + " | overall |", "|---" * (len(VERDICTS) + 2) + "|"]
    for name, chosen in splits.items():
        table = agreement(chosen)
        cells = " | ".join(f"{table[v]:.0%}" for v in (*VERDICTS, "overall"))
        lines.append(f"| {name} ({len(chosen)}) | {cells} |")
    crashes = [o.run_id for o in outcomes if o.error]
    dead = dead_runs_rated_well(outcomes, labels)
    lines += ["", f"Crashes: {len(crashes)}{' (' + ', '.join(crashes) + ')' if crashes else ''}. "
              f"Runs that did not learn rated Good or Excellent: "
              f"{len(dead)}{' (' + ', '.join(dead) + ')' if dead else ''}."]
    wrong = [o for o in outcomes if not all(o.agree.values()) and o.split in list_splits]
    if wrong:
        lines += ["", "Disagreements (analyzer / label):", ""]
        for o in wrong:
            label = labels[o.run_id]
            parts = []
            for verdict in VERDICTS:
                if o.agree[verdict]:
                    continue
                expected = (label["acceptable_bands"] if verdict == "band"
                            else label.get("acceptable_concerns", [label["top_concern"]]) if verdict == "top_concern"
                            else label[verdict])
                parts.append(f"{verdict} {o.answers.get(verdict, 'crash')} / {expected}")
            lines.append(f"- `{o.run_id}` ({o.split}, {o.task}): " + "; ".join(parts))
    return "\n".join(lines)


def write_into(path: Path, text: str, section: str = "real-runs") -> None:
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    content = path.read_text(encoding="utf-8")
    if begin not in content:
        raise SystemExit(f"{path} has no {begin} ... {end} section to write into")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench real-runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "holdout"), help="list the disagreements of this split only")
    parser.add_argument("--write", action="store_true",
                        help="write the tables into bench/RESULTS.md and docs/scoring.md (with the thresholds)")
    args = parser.parse_args([a for a in sys.argv[1:] if a.startswith('-')] if argv is None else argv)
    runs, labels = load_runs(), load_labels()
    started = time.perf_counter()
    outcomes = evaluate(runs, labels)
    elapsed = time.perf_counter() - started
    text = markdown(outcomes, labels, (args.split,) if args.split else ("dev", "holdout"))
    print(text)
    print(f"\n{len(outcomes)} runs analyzed in {elapsed:.1f} s")
    if args.write:
        stamp = f"Command: `python -m bench real-runs --write` ({time.strftime('%Y-%m-%d')}, {len(outcomes)} runs)."
        for path in (REPO / "bench" / "RESULTS.md", REPO / "docs" / "scoring.md"):
            write_into(path, f"{stamp}\n\n{text}")
        from scoring.thresholds import markdown_table

        write_into(REPO / "docs" / "scoring.md", markdown_table(), "thresholds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
