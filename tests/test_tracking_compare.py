"""`peft-studio compare` on an experiment built with the MLflow client: runs with known differences."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
from conftest import REPO
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tracking.compare import COMPARISON_TAG, compare_runs, log_comparison


def _curve(n: int, start: float, floor: float, rate: float, wobble: float, seed: int) -> list[float]:
    return [floor + (start - floor) * math.exp(-rate * s / n) + wobble * math.sin(seed + 1.7 * s)
            for s in range(1, n + 1)]


def _make_run(client, experiment_id, lr: str, good: bool, with_eval: bool, seed: int, extra_tags=()) -> str:
    run_id = client.create_run(experiment_id).info.run_id
    n = 60
    loss = _curve(n, 2.0, 0.3 if good else 1.5, 8.0 if good else 1.0, 0.01, seed)
    metrics = [Metric("loss", v, 0, s) for s, v in enumerate(loss, 1)]
    metrics += [Metric("grad_norm", 1.0 + 0.01 * math.sin(seed + s), 0, s) for s in range(1, n + 1)]
    metrics += [Metric("epoch", 3 * s / n, 0, s) for s in range(1, n + 1)]
    if with_eval:
        metrics += [Metric("eval_loss", loss[s - 1] + 0.02, 0, s) for s in range(10, n + 1, 10)]
    client.log_batch(run_id, metrics=metrics, params=[Param("learning_rate", lr), Param("lora_r", "8")],
                     tags=[RunTag(k, v) for k, v in extra_tags])
    return run_id


@pytest.fixture
def experiment(tracking_uri):
    client = MlflowClient()
    experiment_id = client.create_experiment("tuning")
    good = [_make_run(client, experiment_id, "2e-4", True, with_eval=i % 2 == 0, seed=i) for i in range(4)]
    bad = [_make_run(client, experiment_id, "1e-3", False, with_eval=i % 2 == 0, seed=10 + i) for i in range(4)]
    empty = client.create_run(experiment_id).info.run_id  # no metrics: cannot be analyzed
    return client, experiment_id, good, bad, empty


def test_compare_analyzes_runs_and_says_which_learning_rate_scores_higher(experiment):
    client, experiment_id, good, bad, empty = experiment
    result = compare_runs(client, "tuning")
    assert len(result.runs) == 8
    assert set(result.unanalyzable) == {empty} and "no metric history" in result.unanalyzable[empty]
    for run_id in good + bad:  # analyzed first, and the results written back to each run
        assert "quality_score" in client.get_run(run_id).data.metrics
    (effect,) = [e for e in result.effects if e.param == "learning_rate"]
    assert effect.value_a == "2e-4" and effect.value_b == "1e-3" and effect.difference > 0
    assert effect.runs_a == 4 and effect.runs_b == 4
    assert "(4 runs each)" in effect.statement()
    assert not [e for e in result.effects if e.param == "lora_r"]  # the same everywhere: no claim
    best = result.runs.loc[result.runs["quality_score"].idxmax(), "run_id"]
    assert best in good
    table = result.table()
    assert "learning_rate" in table and "quality_score" in table

    comparison_id = log_comparison(client, result, experiment_id)
    comparison = client.get_run(comparison_id)
    assert comparison.data.tags[COMPARISON_TAG] == "true"
    files = {a.path for a in client.list_artifacts(comparison_id, "comparison")}
    assert files == {"comparison/summary.md", "comparison/runs.csv", "comparison/score_trend.png",
                     "comparison/best_worst_loss.png"}
    # a second comparison leaves the first comparison run out
    again = compare_runs(client, "tuning")
    assert comparison_id not in set(again.runs["run_id"]) | set(again.unanalyzable)


def test_ab_of_two_runs_names_the_better_one(experiment):
    client, _, good, bad, _ = experiment
    result = compare_runs(client, run_ids=[good[0], bad[0]])
    assert result.ab is not None
    assert result.ab.better == good[0]
    assert result.ab.score_difference > 0
    assert "learning_rate" in result.ab.differing_params


@pytest.mark.slow
def test_compare_command_and_errors(experiment, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "compare", "--experiment", "tuning",
                           "--filter", "params.learning_rate = '2e-4'", "--no-log"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split("\n\n")[0].splitlines()
    assert table[0].split()[:3] == ["run_id", "start_time", "quality_score"]
    assert len(table) == 1 + 4  # only the four runs the filter keeps
    assert "1e-3" not in done.stdout
    missing = subprocess.run([sys.executable, "-m", "tracking.cli", "compare", "--experiment", "nope"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 2
    assert "peft-studio: error: experiment 'nope' does not exist" in missing.stderr


@pytest.mark.slow
def test_a_thousand_analyzed_runs_compare_in_one_search(tracking_uri):
    client = MlflowClient()
    experiment_id = client.create_experiment("big")
    factors = {"loss_reduction": "25", "convergence": "25", "stability": "20", "overfitting": "15", "efficiency": "10"}
    for i in range(1000):
        score = 60 + (i % 40)
        tags = [("quality.score", str(score)), *[(f"quality.points.{k}", v) for k, v in factors.items()]]
        run_id = client.create_run(experiment_id).info.run_id
        client.log_batch(run_id, metrics=[Metric("quality_score", score, 0, 0), Metric("loss", 1.0, 0, 1)],
                         params=[Param("lora_r", str(4 * (1 + i % 4)))], tags=[RunTag(k, v) for k, v in tags])
    started = time.monotonic()
    result = compare_runs(client, "big")
    print(f"compared 1000 runs in {time.monotonic() - started:.1f} s")
    assert len(result.runs) == 1000 and not result.unanalyzable
    assert {e.param for e in result.effects} == {"lora_r"}


@pytest.mark.slow
def test_compare_entry_point_logs_into_the_run_mlflow_made(experiment, tmp_path):
    client, experiment_id, *_ = experiment
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "compare", "--env-manager", "local",
                           "--experiment-name", "tuning", "-P", "experiment=tuning"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    comparisons = client.search_runs([experiment_id], f"tags.{COMPARISON_TAG} = 'true'")
    assert len(comparisons) == 1  # the run `mlflow run` made, not a second one
    assert {a.path for a in client.list_artifacts(comparisons[0].info.run_id, "comparison")} >= {
        "comparison/summary.md", "comparison/runs.csv"}


def test_a_long_comparison_keeps_its_findings_in_the_run_description():
    from tracking.compare import NOTE_MAX_CHARS, NOTE_TABLE_ROWS, _note

    table = ["| run | score |", "|---|---|"] + [f"| `run{i:04d}` | {i % 100} |" for i in range(1000)]
    markdown = "\n".join(["# Comparison of 1000 runs", "", *table, "", "## What goes with higher scores",
                          "- lora_r 16"])
    note = _note(markdown)
    assert len(markdown) > NOTE_MAX_CHARS >= len(note)
    assert note.count("| `run") == NOTE_TABLE_ROWS and "comparison/summary.md" in note
    assert note.endswith("- lora_r 16")
    assert _note("# short") == "# short"
