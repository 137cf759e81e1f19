"""Comparing runs: which parameter values go with higher scores, what to try next, and A/B of two runs.

The example frame has eight runs: four with learning_rate 2e-4 scoring 85-90 and four with 1e-3 scoring
65-70; lora_r is the same everywhere, lora_dropout differs in one run only, and seed/output_dir are
bookkeeping that always differs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import (
    IGNORED_PARAMS,
    Category,
    ImprovementSuggestion,
    ParamEffect,
    Priority,
    ab_compare,
    comparison_markdown,
    differing_params,
    eval_noise,
    next_configuration,
    param_effects,
    run_params,
)

GOOD_SCORES = [85.0, 87.0, 89.0, 90.0]  # mean 87.75
POOR_SCORES = [65.0, 66.0, 68.0, 70.0]  # mean 67.25


def run(i: int, score: float, lr: str, dropout: str = "0.05", **extra) -> dict:
    row = {
        "run_id": f"run{i}",
        "start_time": pd.Timestamp("2024-05-01 10:00") + pd.Timedelta(hours=i),
        "quality_score": score,
        "loss_reduction": 25.0,
        "convergence": 25.0,
        "stability": 20.0,
        "overfitting": 10.0,
        "efficiency": math.nan,
        "final_eval_loss": 1.0 - score / 100,
        "params.learning_rate": lr,
        "params.lora_r": "8",
        "params.lora_dropout": dropout,
        "params.seed": str(i),
        "params.output_dir": f"out/run{i}",
    }
    row.update(extra)
    return row


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [run(i, s, "2e-4") for i, s in enumerate(GOOD_SCORES)]
    rows[1]["params.learning_rate"] = "0.0002"  # the same value, spelled the way Python prints it
    rows += [run(i + 4, s, "1e-3") for i, s in enumerate(POOR_SCORES)]
    rows[-1]["params.lora_dropout"] = "0.1"  # the only run with 0.1
    return pd.DataFrame(rows)


# --- differing_params -----------------------------------------------------------------------------------


def test_differing_params_lists_params_that_vary_and_skips_bookkeeping(runs):
    assert differing_params(runs) == ["learning_rate", "lora_dropout"]
    assert "seed" in IGNORED_PARAMS and "output_dir" in IGNORED_PARAMS


def test_a_param_set_in_some_runs_only_differs_and_one_missing_everywhere_does_not(runs):
    runs = runs.assign(**{"params.load_best_model_at_end": ["True"] + [None] * 7, "params.unused": [None] * 8})
    assert differing_params(runs) == ["learning_rate", "load_best_model_at_end", "lora_dropout"]


def test_numerically_equal_spellings_are_the_same_value(runs):
    assert "learning_rate" not in differing_params(runs[runs["params.learning_rate"].isin(["2e-4", "0.0002"])])


# --- param_effects ----------------------------------------------------------------------------------------


def test_the_better_learning_rate_is_stated_with_its_gap_and_counts(runs):
    effects = param_effects(runs)
    assert effects == [ParamEffect("learning_rate", "2e-4", "1e-3", 87.75, 67.25, 4, 4)]
    assert effects[0].difference == pytest.approx(20.5)
    assert effects[0].statement() == (
        "runs with learning_rate 2e-4 scored 20.5 points higher on average than 1e-3 (4 runs each)"
    )


def test_a_value_seen_in_one_run_only_gives_no_statement(runs):
    assert all(e.param != "lora_dropout" for e in param_effects(runs))


def test_unequal_counts_are_shown_per_side():
    effect = ParamEffect("lora_r", "16", "8", 80.0, 62.0, 4, 3)
    assert effect.statement() == "runs with lora_r 16 scored 18.0 points higher on average than 8 (4 runs vs 3 runs)"


def test_unanalyzable_runs_do_not_count(runs):
    runs.loc[runs["run_id"].isin(["run4", "run5", "run6"]), "quality_score"] = math.nan
    assert param_effects(runs) == []  # only one analyzable 1e-3 run is left


def test_min_runs_raises_the_bar_and_cannot_go_below_two(runs):
    assert param_effects(runs, min_runs=5) == []
    with pytest.raises(ValueError, match="min_runs"):
        param_effects(runs, min_runs=1)


def test_best_value_is_compared_with_every_other_value_largest_gap_first():
    rows = [run(i, s, lr) for i, (s, lr) in enumerate(
        [(90, "1e-4"), (88, "1e-4"), (80, "2e-4"), (80, "2e-4"), (60, "1e-3"), (62, "1e-3"), (99, "5e-3")])]
    effects = param_effects(pd.DataFrame(rows))
    assert [(e.value_a, e.value_b, e.difference) for e in effects] == [("1e-4", "1e-3", 28.0), ("1e-4", "2e-4", 9.0)]


# --- next_configuration -----------------------------------------------------------------------------------


def suggestion(parameter=None, current=None, suggested=None, priority=Priority.HIGH) -> ImprovementSuggestion:
    return ImprovementSuggestion(Category.CONVERGENCE, priority, "advice", parameter, current, suggested)


def test_next_configuration_applies_concrete_changes_first_one_per_param_wins(runs):
    best = run_params(runs.iloc[0])
    config, changes = next_configuration(best, [
        suggestion("learning_rate", 2e-4, 1e-4),
        suggestion(),  # advice without a value has nothing to apply
        suggestion("learning_rate", 2e-4, 4e-4, Priority.LOW),
        suggestion("load_best_model_at_end", None, True, Priority.MEDIUM),
    ])
    assert changes == ["learning_rate: 2e-4 -> 1e-4", "load_best_model_at_end: unset -> True"]
    assert config == {**best, "learning_rate": "1e-4", "load_best_model_at_end": "True"}
    assert best["learning_rate"] == "2e-4"  # the input is not modified


def test_next_configuration_without_suggestions_is_the_best_run_unchanged():
    assert next_configuration({"lora_r": "8"}, []) == ({"lora_r": "8"}, [])


# --- ab_compare -------------------------------------------------------------------------------------------

FALLING = [1.0 - 0.01 * i for i in range(10)]  # a perfectly straight line: no scatter around the trend


def test_ab_picks_the_higher_score_and_lists_what_differs(runs):
    result = ab_compare(runs.iloc[0], runs.iloc[7])
    assert result.better == "run0"
    assert result.score_difference == pytest.approx(15.0)
    assert result.factor_differences["stability"] == 0.0
    assert result.factor_differences["efficiency"] is None  # not measured in either run
    assert result.differing_params == {"learning_rate": ("2e-4", "1e-3"), "lora_dropout": ("0.05", "0.1")}
    assert "run0 scored 15.0 points higher than run7" in result.summary()


def test_equal_scores_name_no_better_run(runs):
    assert ab_compare(runs.iloc[0], runs.iloc[0]).better is None


def test_a_clear_eval_loss_gap_is_meaningful(runs):
    a = runs.iloc[0].copy()
    b = runs.iloc[4].copy()
    a["final_eval_loss"], b["final_eval_loss"] = 0.50, 0.60
    jitter = [0.0, 0.004, -0.004, 0.004, -0.004]
    hist_a = [0.5 + j for j in jitter]
    hist_b = [0.6 + j for j in jitter]
    result = ab_compare(a, b, hist_a, hist_b)
    assert result.noise == pytest.approx(math.hypot(eval_noise(hist_a), eval_noise(hist_b)))
    assert 0 < result.noise < 0.05
    assert result.eval_loss_difference == pytest.approx(-0.10)
    assert result.difference_is_meaningful is True
    assert "more than twice the run-to-run noise" in result.summary()


def test_a_gap_inside_the_noise_may_not_be_real(runs):
    a = runs.iloc[0].copy()
    b = runs.iloc[4].copy()
    a["final_eval_loss"], b["final_eval_loss"] = 0.500, 0.512
    noisy = [0.50, 0.52, 0.49, 0.52, 0.49]
    result = ab_compare(a, b, noisy, noisy)
    assert result.difference_is_meaningful is False
    summary = result.summary()
    assert f"the difference in final eval loss (0.012) is within the run-to-run noise ({result.noise:.2g})" in summary
    assert "it may not be real" in summary


def test_noise_is_the_scatter_of_the_last_five_points_around_their_trend():
    assert eval_noise(FALLING) == pytest.approx(0.0, abs=1e-12)  # a straight line has no noise
    assert eval_noise([9.0, 9.0, 9.0, 0.5, 0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)  # only last 5
    values = np.array([0.5, 0.52, 0.49, 0.52, 0.49])
    residuals = values - np.polyval(np.polyfit(np.arange(5), values, 1), np.arange(5))
    assert eval_noise(values) == pytest.approx(np.sqrt(np.sum(residuals ** 2) / 3))
    assert eval_noise([0.5, 0.4]) is None


def test_noise_is_unknown_with_fewer_than_three_eval_points_and_the_summary_says_so(runs):
    result = ab_compare(runs.iloc[0], runs.iloc[4], FALLING, [0.4, 0.3])
    assert result.noise is None and result.difference_is_meaningful is None
    assert "cannot be weighed against run-to-run noise" in result.summary()


# --- comparison_markdown ----------------------------------------------------------------------------------


def test_markdown_has_the_table_statements_next_config_and_unanalyzed_runs(runs):
    runs = pd.concat([runs, pd.DataFrame([run(8, math.nan, "5e-4")])], ignore_index=True)
    effects = param_effects(runs)
    config, changes = next_configuration(run_params(runs.iloc[3]), [suggestion("learning_rate", 2e-4, 1e-4)])
    md = comparison_markdown(runs, effects, config, changes, "run3", "run4", {"run8": "no loss history logged"})
    assert md.startswith("# Comparison of 9 runs")
    assert "- Best run: `run3` (score 90.0)" in md
    assert "- Worst run: `run4` (score 65.0)" in md
    assert ("| run | start time | score | loss_reduction | convergence | stability | overfitting | efficiency "
            "| learning_rate | lora_dropout |") in md
    assert "| `run3` | 2024-05-01 13:00 | 90.0 | 25.0 | 25.0 | 20.0 | 10.0 | – | 2e-4 | 0.05 |" in md
    assert "| `run1` | 2024-05-01 11:00 | 87.0 | 25.0 | 25.0 | 20.0 | 10.0 | – | 2e-4 | 0.05 |" in md
    assert "| `run8` | 2024-05-01 18:00 | – |" in md
    assert "## What goes with higher scores" in md
    assert f"- {effects[0].statement()}" in md
    assert "## Try next" in md and "- learning_rate: 2e-4 -> 1e-4" in md and "learning_rate: 1e-4\n" in md
    assert "## Not analyzed" in md and "- `run8`: no loss history logged" in md


def test_markdown_says_when_there_is_not_enough_evidence(runs):
    ms = int(pd.Timestamp("2024-05-01 10:00", tz="UTC").timestamp() * 1000)
    two = pd.DataFrame([run(0, 80.0, "2e-4", start_time=ms), run(1, 70.0, "1e-3", start_time=ms)])
    md = comparison_markdown(two, param_effects(two), {}, [], "run0", "run1", {})
    assert "Not enough runs per value to say (each claim needs at least 2 runs per value)." in md
    assert "| `run0` | 2024-05-01 10:00 | 80.0 |" in md
    assert "Every run was analyzed." in md


# --- property ---------------------------------------------------------------------------------------------

scores = st.one_of(st.floats(0, 100, allow_nan=False), st.just(math.nan))


@st.composite
def random_runs(draw):
    n = draw(st.integers(1, 12))
    n_params = draw(st.integers(1, 3))
    columns = {
        "run_id": [f"r{i}" for i in range(n)],
        "start_time": [1_700_000_000_000 + i for i in range(n)],
        "quality_score": draw(st.lists(scores, min_size=n, max_size=n)),
    }
    for p in range(n_params):
        values = st.one_of(st.sampled_from(["1e-4", "0.0001", "2e-4", "8", "16", "True", "adamw"]), st.none())
        columns[f"params.p{p}"] = draw(st.lists(values, min_size=n, max_size=n))
    return pd.DataFrame(columns)


@settings(max_examples=150, deadline=None)
@given(runs=random_runs(), min_runs=st.integers(2, 4))
def test_every_claim_rests_on_min_runs_per_side_and_ranks_the_higher_mean_first(runs, min_runs):
    for effect in param_effects(runs, min_runs=min_runs):
        assert effect.runs_a >= min_runs and effect.runs_b >= min_runs
        assert effect.mean_a >= effect.mean_b
        assert effect.statement().startswith(f"runs with {effect.param} {effect.value_a} scored")
