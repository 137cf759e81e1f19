"""The real-run benchmark in the suite: the analyzer against blind labels of published training runs.

Runs in seconds (pandas and scipy only). It fails when agreement drops below the goals of
``bench/real_runs/evaluate.py`` (docs/scoring.md says what they mean), so a rule change that fixes one run
and breaks two is caught here.
"""

from __future__ import annotations

import json

import pytest

from bench.real_runs import evaluate as bench
from bench.real_runs.build import SOURCES

pytestmark = pytest.mark.xdist_group("real-runs")  # one process evaluates the module's outcomes once

RUNS = bench.load_runs()
LABELS = bench.load_labels()


@pytest.fixture(scope="module")
def outcomes():
    return bench.evaluate(RUNS, LABELS)


def test_every_run_has_its_source_and_a_blind_label():
    sources = {s["id"]: s for s in json.loads(SOURCES.read_text(encoding="utf-8"))}
    assert len(RUNS) >= 60
    assert set(RUNS) == set(sources) == set(LABELS)
    for run_id, source in sources.items():
        # (one file is a trainer_state.json saved under another name: any path will do)
        assert source["repo"].count("/") == 1 and len(source["commit"]) == 40 and source["path"]
        label = LABELS[run_id]
        assert label["top_concern"] in label["acceptable_concerns"], run_id
        assert set(label["acceptable_bands"]) <= {"Excellent", "Good", "Fair", "Poor"}, run_id


def test_the_benchmark_covers_the_tasks_and_the_problems():
    tasks = {run["task"] for run in RUNS.values()}
    assert {"classification", "causal-lm", "seq2seq", "speech"} <= tasks
    labels = LABELS.values()
    assert sum(label["learned"] == "no" for label in labels) >= 4
    assert sum(label["overfit"] == "yes" for label in labels) >= 4
    assert sum(label["unstable"] == "yes" for label in labels) >= 4


def test_no_run_crashes_the_analyzer(outcomes):
    assert [(o.run_id, o.error) for o in outcomes if o.error] == []


def test_no_run_that_did_not_learn_is_rated_good_or_excellent(outcomes):
    assert bench.dead_runs_rated_well(outcomes, LABELS) == []


def test_agreement_with_the_labels_meets_the_goals(outcomes):
    table = bench.agreement(outcomes)
    report = bench.markdown(outcomes, LABELS)
    assert table["overall"] >= bench.GOALS["overall"], report
    assert table["top_concern"] >= bench.GOALS["top_concern"], report
    for verdict in bench.VERDICTS:
        assert table[verdict] >= bench.GOALS["each"], f"{verdict}: {table[verdict]:.0%}\n{report}"
