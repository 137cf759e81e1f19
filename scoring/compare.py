"""Compare runs: which parameter values go with higher scores, what to try next, and A/B of two runs.

Input is a ``runs`` frame, one row per run, with ``run_id``, ``start_time``, ``quality_score`` (NaN when the
run could not be analyzed), the five factor point columns, ``final_eval_loss`` and one ``params.<name>``
column per hyperparameter holding the string MLflow stored. Pure: no MLflow here, so any frame can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .models import ImprovementSuggestion, format_value
from .tables import FACTOR_NAMES

PARAM_PREFIX = "params."
# Bookkeeping params that differ between runs without being a training choice.
IGNORED_PARAMS = (
    "output_dir", "notify", "model_source", "train_examples", "eval_examples", "trainable_params",
    "total_params", "notify_channels", "seed", "peft_studio.watch_claim", "heartbeat_seconds",
    "system_metrics_seconds",
)
NOISE_WINDOW = 5  # the last eval points whose scatter around their trend estimates run-to-run noise
MEANINGFUL_NOISE_MULTIPLE = 2.0  # a difference counts as real only above this many noise units


# --- parameter values -----------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _key(value: Any) -> Any:
    """What makes two stored values the same: '2e-4' and '0.0002' are one learning rate."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, bool) or not math.isfinite(number):
        return str(value)
    return number


def _show(value: Any) -> str:
    """A stored value as people read it: numbers compactly ('2e-4'), other strings unchanged."""
    key = _key(value)
    return format_value(key) if isinstance(key, float) else key


def _param_columns(labels) -> list[str]:
    return [
        c for c in labels
        if isinstance(c, str) and c.startswith(PARAM_PREFIX) and c[len(PARAM_PREFIX):] not in IGNORED_PARAMS
    ]


def differing_params(runs: pd.DataFrame) -> list[str]:
    """Param names (no ``params.`` prefix) whose values differ between runs, sorted.

    A param set in some runs and missing in others differs too; one missing everywhere or the same
    everywhere says nothing about why scores differ, so it is left out, as are ``IGNORED_PARAMS``.
    """
    names = []
    for column in _param_columns(runs.columns):
        values = [v for v in runs[column] if not _missing(v)]
        if not values:
            continue
        distinct = {_key(v) for v in values}
        if len(distinct) > 1 or len(values) < len(runs):
            names.append(column[len(PARAM_PREFIX):])
    return sorted(names)


def run_params(row: pd.Series) -> dict[str, str]:
    """A ``runs`` row's params as ``{name: stored string}``, without missing ones (for next_configuration)."""
    return {
        str(k)[len(PARAM_PREFIX):]: str(v)
        for k, v in row.items()
        if isinstance(k, str) and k.startswith(PARAM_PREFIX) and not _missing(v)
    }


# --- which values go with higher scores -------------------------------------------------------------------


def _runs_word(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


@dataclass(frozen=True)
class ParamEffect:
    """Mean score of runs with ``value_a`` against runs with ``value_b`` of one param; a ranks higher.

    Only a correlation across the runs at hand, which is why the run counts travel with it.
    """

    param: str
    value_a: str
    value_b: str
    mean_a: float
    mean_b: float
    runs_a: int
    runs_b: int

    def __post_init__(self) -> None:
        if self.runs_a < 1 or self.runs_b < 1:
            raise ValueError(
                f"ParamEffect.runs_a and runs_b must be at least 1, got {self.runs_a} and {self.runs_b}"
            )

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    def statement(self) -> str:
        """One sentence, e.g. 'runs with learning_rate 2e-4 scored 18.0 points higher on average than 1e-3
        (4 runs each)'."""
        counts = (f"{self.runs_a} runs each" if self.runs_a == self.runs_b
                  else f"{_runs_word(self.runs_a)} vs {_runs_word(self.runs_b)}")
        if round(self.difference, 1) == 0:
            how = f"scored the same on average as {self.value_b}"
        elif self.difference > 0:
            how = f"scored {self.difference:.1f} points higher on average than {self.value_b}"
        else:
            how = f"scored {-self.difference:.1f} points lower on average than {self.value_b}"
        return f"runs with {self.param} {self.value_a} {how} ({counts})"


def param_effects(runs: pd.DataFrame, min_runs: int = 2) -> list[ParamEffect]:
    """For each differing param, the best-scoring value against every other value, largest gap first.

    Only values seen in at least ``min_runs`` analyzable runs take part, on both sides: one run's score
    is never turned into a claim about a parameter.
    """
    if isinstance(min_runs, bool) or not isinstance(min_runs, int) or min_runs < 2:
        raise ValueError(f"param_effects: min_runs must be an integer of at least 2, got {min_runs!r}")
    if "quality_score" not in runs.columns:
        return []
    analyzable = runs[runs["quality_score"].notna()]
    effects: list[ParamEffect] = []
    for name in differing_params(analyzable):
        groups: dict[Any, list[float]] = {}
        shown: dict[Any, str] = {}
        for value, score in zip(analyzable[PARAM_PREFIX + name], analyzable["quality_score"]):
            if _missing(value):
                continue
            key = _key(value)
            groups.setdefault(key, []).append(float(score))
            shown.setdefault(key, _show(value))
        eligible = [
            (shown[k], float(np.mean(scores)), len(scores))
            for k, scores in groups.items() if len(scores) >= min_runs
        ]
        if len(eligible) < 2:
            continue
        eligible.sort(key=lambda g: (-g[1], -g[2], g[0]))
        best_value, best_mean, best_n = eligible[0]
        for value, mean, n in eligible[1:]:
            effects.append(ParamEffect(name, best_value, value, best_mean, mean, best_n, n))
    return sorted(effects, key=lambda e: (-abs(e.difference), e.param, e.value_b))


# --- what to try next -------------------------------------------------------------------------------------


def next_configuration(
    best_params: Mapping[str, str], suggestions: Sequence[ImprovementSuggestion]
) -> tuple[dict[str, str], list[str]]:
    """The best run's params with its suggestions' concrete changes applied, and those changes in words.

    Suggestions come highest priority first, so the first change to a param wins; advice without a
    parameter and value (e.g. 'log eval loss') has nothing to apply and is skipped.
    """
    config = {str(k): str(v) for k, v in best_params.items()}
    changed: set[str] = set()
    changes: list[str] = []
    for s in suggestions:
        if s.parameter is None or s.suggested_value is None or s.parameter in changed:
            continue
        changed.add(s.parameter)
        config[s.parameter] = format_value(s.suggested_value)
        changes.append(s.change)
    return config, changes


# --- A/B of two runs --------------------------------------------------------------------------------------


def _number(row: pd.Series, column: str) -> float | None:
    value = row.get(column)
    if _missing(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def eval_noise(history: Sequence[float]) -> float | None:
    """Scatter of the last eval points around their own straight-line trend, or None under 3 points.

    The trend is removed so a still-falling loss is not mistaken for noise; ddof=2 because the line
    used two of the points' degrees of freedom.
    """
    values = np.asarray([float(v) for v in history], dtype=float)
    values = values[np.isfinite(values)][-NOISE_WINDOW:]
    if len(values) < 3:
        return None
    steps = np.arange(len(values), dtype=float)
    slope, intercept = np.polyfit(steps, values, 1)
    residuals = values - (slope * steps + intercept)
    return float(np.sqrt(np.sum(residuals ** 2) / (len(values) - 2)))


@dataclass(frozen=True)
class ABResult:
    """Two runs side by side (differences are a - b), with whether the eval-loss gap exceeds the noise."""

    run_a: str
    run_b: str
    better: str | None
    score_difference: float | None
    factor_differences: dict[str, float | None] = field(default_factory=dict)
    differing_params: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    eval_loss_difference: float | None = None
    noise: float | None = None

    @property
    def difference_is_meaningful(self) -> bool | None:
        """True when |eval-loss difference| > 2 x noise; None when either is unknown."""
        if self.eval_loss_difference is None or self.noise is None:
            return None
        return abs(self.eval_loss_difference) > MEANINGFUL_NOISE_MULTIPLE * self.noise

    def summary(self) -> str:
        """A few plain lines: who scored higher, what differs, and whether the eval-loss gap is real."""
        lines = []
        if self.score_difference is None:
            lines.append(f"{self.run_a} vs {self.run_b}: not both runs have a quality score")
        elif self.better is None:
            lines.append(f"{self.run_a} and {self.run_b} scored the same")
        else:
            worse = self.run_b if self.better == self.run_a else self.run_a
            lines.append(f"{self.better} scored {abs(self.score_difference):.1f} points higher than {worse}")
        factors = [f"{n} {d:+.1f}" for n, d in self.factor_differences.items() if d is not None]
        if factors:
            lines.append(f"factor points ({self.run_a} - {self.run_b}): " + ", ".join(factors))
        if self.differing_params:
            shown = [f"{n} {'unset' if a is None else a} vs {'unset' if b is None else b}"
                     for n, (a, b) in self.differing_params.items()]
            lines.append("params that differ: " + ", ".join(shown))
        else:
            lines.append("no params differ")
        diff = self.eval_loss_difference
        if diff is None:
            lines.append("final eval loss: not available for both runs")
        elif self.noise is None:
            lines.append(
                f"the difference in final eval loss ({abs(diff):.2g}) cannot be weighed against run-to-run noise: "
                "each run needs at least 3 eval points to estimate it"
            )
        elif self.difference_is_meaningful:
            lines.append(
                f"the difference in final eval loss ({abs(diff):.2g}) is more than twice the run-to-run noise "
                f"({self.noise:.2g})"
            )
        else:
            lines.append(
                f"the difference in final eval loss ({abs(diff):.2g}) is within the run-to-run noise "
                f"({self.noise:.2g}); it may not be real"
            )
        return "\n".join(lines)


def ab_compare(
    a: pd.Series, b: pd.Series, eval_a: Sequence[float] = (), eval_b: Sequence[float] = ()
) -> ABResult:
    """Compare two ``runs`` rows; ``eval_a``/``eval_b`` are their eval-loss histories in step order."""
    score = _difference(_number(a, "quality_score"), _number(b, "quality_score"))
    better = None
    if score is not None and score != 0:
        better = str(a["run_id"]) if score > 0 else str(b["run_id"])
    factors = {n: _difference(_number(a, n), _number(b, n)) for n in FACTOR_NAMES}
    params = {}
    columns = sorted(set(_param_columns(a.index)) | set(_param_columns(b.index)))
    for column in columns:
        va, vb = a.get(column), b.get(column)
        ka = None if _missing(va) else _key(va)
        kb = None if _missing(vb) else _key(vb)
        if ka != kb:
            params[column[len(PARAM_PREFIX):]] = (None if ka is None else _show(va), None if kb is None else _show(vb))
    noise_a, noise_b = eval_noise(eval_a), eval_noise(eval_b)
    noise = None if noise_a is None or noise_b is None else math.hypot(noise_a, noise_b)
    return ABResult(
        run_a=str(a["run_id"]),
        run_b=str(b["run_id"]),
        better=better,
        score_difference=score,
        factor_differences=factors,
        differing_params=params,
        eval_loss_difference=_difference(_number(a, "final_eval_loss"), _number(b, "final_eval_loss")),
        noise=noise,
    )


# --- comparison/summary.md --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _points(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.1f}"


def _when(value: Any) -> str:
    if _missing(value):
        return "–"
    stamp = value if isinstance(value, pd.Timestamp) else pd.to_datetime(value, unit="ms", utc=True)
    return stamp.strftime("%Y-%m-%d %H:%M")


def _score_of(runs: pd.DataFrame, run_id: str) -> str:
    rows = runs[runs["run_id"] == run_id]
    return _points(rows["quality_score"].iloc[0]) if len(rows) and "quality_score" in runs else "–"


def comparison_markdown(
    runs: pd.DataFrame,
    effects: Sequence[ParamEffect],
    next_config: Mapping[str, str],
    changes: Sequence[str],
    best_run_id: str | None,
    worst_run_id: str | None,
    unanalyzable: Mapping[str, str],
) -> str:
    """``comparison/summary.md``: every run in one table, what goes with higher scores, and what to try next."""
    lines = [f"# Comparison of {len(runs)} runs", ""]
    if best_run_id is None:
        lines.append("No run could be analyzed.")
    else:
        lines.append(f"- Best run: `{best_run_id}` (score {_score_of(runs, best_run_id)})")
        if worst_run_id is not None:
            lines.append(f"- Worst run: `{worst_run_id}` (score {_score_of(runs, worst_run_id)})")
    lines.append("")

    params = differing_params(runs)
    header = ["run", "start time", "score", *FACTOR_NAMES, *params]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = runs
    if "quality_score" in runs:
        ordered = runs.sort_values("quality_score", ascending=False, na_position="last")  # best first
    for _, row in ordered.iterrows():
        cells = [f"`{row['run_id']}`", _when(row.get("start_time")), _points(row.get("quality_score"))]
        cells += [_points(row.get(n)) for n in FACTOR_NAMES]
        cells += ["–" if _missing(row.get(PARAM_PREFIX + p)) else _show(row.get(PARAM_PREFIX + p)) for p in params]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")

    lines += ["## What goes with higher scores", ""]
    if effects:
        lines += [f"- {e.statement()}" for e in effects]
    else:
        lines.append("Not enough runs per value to say (each claim needs at least 2 runs per value).")
    lines.append("")

    lines += ["## Try next", ""]
    if changes:
        lines += [f"- {c}" for c in changes]
    else:
        lines.append("No concrete change suggested for the best run.")
    if next_config:
        lines += ["", "Full configuration:", "", "```"]
        lines += [f"{k}: {v}" for k, v in next_config.items()]
        lines.append("```")
    lines.append("")

    lines += ["## Not analyzed", ""]
    if unanalyzable:
        lines += [f"- `{run_id}`: {reason}" for run_id, reason in unanalyzable.items()]
    else:
        lines.append("Every run was analyzed.")
    return "\n".join(lines) + "\n"
