"""Bad input, fuzzed: histories the analysis must survive, settings the job must refuse in one line.

Part 1: ``analyze_history`` on any (key, step, value) frame, including the values the existing property
test in test_scoring_properties.py does not draw (an empty frame, 1e-300, steps near the int64 limit,
negative steps, a one-point history), returns a valid analysis or raises ``ValueError``, with warnings
turned into errors.

Part 2: every parameter of MLproject's ``main`` entry point, given a bad value through the real CLI (and a
few through ``mlflow run``), ends in one ``peft-studio: error:`` line naming the parameter, a non-zero exit,
no traceback and no MLflow run left RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scoring import analyze_history
from scoring.report import render_markdown

# --- 1. any history: a valid analysis or a ValueError, never a warning -------------------------------------

EXTREMES = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, 1e30, -1e30, 1e-30, 1e-300, -1e-300, 5e-324, 1e300,
            -1e300, np.finfo(float).max, -np.finfo(float).max]
INT64_MAX = np.iinfo(np.int64).max
HUGE_STEPS = [0, -1, -(2**31), 2**31, 2**53, 2**62, INT64_MAX - 1, INT64_MAX, -INT64_MAX]
KEYS = ["loss", "eval_loss", "grad_norm", "learning_rate", "epoch", "train_loss", "val_loss"]

fuzz_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),  # the whole float64 range, subnormals included
    st.sampled_from(EXTREMES),
    st.floats(min_value=-10, max_value=10),
)
fuzz_steps = st.one_of(st.integers(min_value=-5, max_value=400), st.sampled_from(HUGE_STEPS),
                       st.integers(min_value=-INT64_MAX, max_value=INT64_MAX))


@st.composite
def hostile_histories(draw) -> pd.DataFrame:
    """0-240 rows: empty frames, one-point and constant series, negative losses, extreme floats, duplicate,
    unordered, negative and huge steps, mixed per metric."""
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=0, max_size=4, unique=True))
    rows = []
    for key in keys:
        m = draw(st.integers(min_value=0, max_value=60))
        shape = draw(st.sampled_from(["random", "constant", "decaying", "negative"]))
        if shape == "constant":
            series = [draw(fuzz_values)] * m
        elif shape == "decaying":
            scale = draw(st.sampled_from([1.0, 1e30, 1e-300, 1e300]))
            series = list(scale * np.exp(-np.arange(m) / max(1, m / 4)))
            for i in draw(st.lists(st.integers(0, max(m - 1, 0)), max_size=3)) if m else []:
                series[i] = draw(fuzz_values)
        elif shape == "negative":
            series = list(-1.0 - np.arange(m, dtype=float))
        else:
            series = draw(st.lists(fuzz_values, min_size=m, max_size=m))
        step_shape = draw(st.sampled_from(["ordered", "random", "huge"]))
        if step_shape == "ordered":
            steps = list(range(1, m + 1))
        elif step_shape == "huge":
            base = draw(st.sampled_from([2**53, 2**62, INT64_MAX - 40, -INT64_MAX]))
            steps = [base + i for i in range(m)]
        else:
            steps = draw(st.lists(fuzz_steps, min_size=m, max_size=m))
        rows += [(key, s, v) for s, v in zip(steps, series)]
    return pd.DataFrame(rows, columns=["key", "step", "value"])


def _frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["key", "step", "value"])


def _analyzed_or_refused(history: pd.DataFrame):
    """The contract: a valid analysis (score 0-100, strict JSON, a report) or ValueError; no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (overflow, invalid value) fails the test
        try:
            analysis = analyze_history(history)
        except ValueError:
            return None
        assert 0 <= analysis.quality_score <= 100
        json.dumps(analysis.to_dict(), allow_nan=False)
        render_markdown(analysis)
        return analysis


_STEPS = list(range(1, 41))
FLOAT_MAX = np.finfo(float).max
_DECAY = list(2.0 * np.exp(-np.arange(40) / 10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_histories())
@example(_frame()).via("empty history")
@example(_frame(("loss", 1, 0.5))).via("one-point series")
@example(_frame(("loss", 1, 0.5), ("eval_loss", 1, 0.4), ("grad_norm", 1, 1.0))).via("one point per metric")
@example(_frame(*[("loss", s, np.nan) for s in _STEPS])).via("all NaN")
@example(_frame(*[("loss", s, np.inf) for s in _STEPS])).via("all inf")
@example(_frame(*[("loss", s, v if s % 7 else np.nan) for s, v in zip(_STEPS, _DECAY)])).via("some NaN")
@example(_frame(*[("loss", s, v if s != 20 else -np.inf) for s, v in zip(_STEPS, _DECAY)])).via("-inf spike")
@example(_frame(*[("loss", s, 0.7) for s in _STEPS])).via("constant loss")
@example(_frame(*[("loss", s, 0.0) for s in _STEPS])).via("constant zero loss")
@example(_frame(*[("loss", s, -v) for s, v in zip(_STEPS, _DECAY)])).via("negative losses")
@example(_frame(*[("loss", s, -1.0 - s) for s in _STEPS])).via("negative, falling")
@example(_frame(*[("loss", s, 1e30 * v) for s, v in zip(_STEPS, _DECAY)])).via("1e30 losses")
@example(_frame(*[("loss", s, -1e30 * v) for s, v in zip(_STEPS, _DECAY)])).via("-1e30 losses")
@example(_frame(*[("loss", s, 1e-300 * v) for s, v in zip(_STEPS, _DECAY)])).via("1e-300 losses")
@example(_frame(*[("loss", s, 1e300 * v) for s, v in zip(_STEPS, _DECAY)])).via("1e300 losses")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, [1e30, -1e30] * 20)])).via("alternating +-1e30")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, [1e-300, 1e300] * 20)])).via("1e-300 and 1e300")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, [np.finfo(float).max, 1.0] * 20)])).via("float max")
@example(_frame(*[("loss", s, 5e-324) for s in _STEPS])).via("subnormal constant")
@example(_frame(*[("loss", s, FLOAT_MAX) for s in range(1, 81)])).via("float max: endpoint means overflow")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, [FLOAT_MAX, -FLOAT_MAX] * 20)])).via("+-float max")
@example(_frame(*[("loss", s, 2.0 / s) for s in _STEPS],
                *[("grad_norm", s, FLOAT_MAX if s >= 35 else 1.0) for s in _STEPS])).via("clip at float max")
@example(_frame(*[("loss", s, 2.0 / s) for s in _STEPS],
                *[("grad_norm", s, v) for s, v in ((1, FLOAT_MAX), (2, -1e305))])).via("grad percentile overflow")
@example(_frame(*[("loss", s % 5, v) for s, v in zip(_STEPS, _DECAY)])).via("duplicate steps")
@example(_frame(*[("loss", s, v) for s, v in zip(reversed(_STEPS), _DECAY)])).via("steps in reverse order")
@example(_frame(*[("loss", 3, v) for v in _DECAY])).via("every point at one step")
@example(_frame(*[("loss", -s, v) for s, v in zip(_STEPS, _DECAY)])).via("negative steps")
@example(_frame(*[("loss", 2**62 + s, v) for s, v in zip(_STEPS, _DECAY)])).via("steps near 2**62")
@example(_frame(("loss", 0, 2.0), ("loss", INT64_MAX, 1.0), ("loss", -INT64_MAX, 1.5))).via("int64 extremes")
@example(_frame(*[("loss", s, v) for s, v in zip([0, INT64_MAX] * 20, _DECAY)])).via("0 and int64 max")
@example(_frame(*[(k, s, v) for k in ("loss", "eval_loss", "grad_norm", "learning_rate", "epoch")
                  for s, v in zip([s * 2**56 for s in _STEPS], _DECAY)])).via("all roles, huge steps")
@example(_frame(*[(k, s, 1e30) for k in ("loss", "eval_loss", "grad_norm", "learning_rate", "epoch")
                  for s in _STEPS])).via("all roles at 1e30")
@example(_frame(*[(k, s, -1e30) for k in ("loss", "eval_loss", "grad_norm", "learning_rate", "epoch")
                  for s in _STEPS])).via("all roles at -1e30")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, _DECAY)],
                *[("grad_norm", s, np.nan) for s in _STEPS])).via("NaN gradient norms")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, _DECAY)],
                *[("eval_loss", s, np.inf) for s in _STEPS[::5]])).via("inf eval loss")
@example(_frame(*[("loss", s, v) for s, v in zip(_STEPS, _DECAY)], *[("epoch", s, -1e30) for s in _STEPS],
                *[("learning_rate", s, 1e300) for s in _STEPS])).via("absurd epoch and learning rate")
def test_a_hostile_history_is_analyzed_or_refused_with_a_value_error_and_no_warning(history):
    analysis = _analyzed_or_refused(history)
    if analysis is not None:
        assert analysis.metric_names["train_loss"] in set(history["key"])


@pytest.mark.parametrize("params", [
    {"epochs": "nan", "learning_rate": "inf", "max_grad_norm": "-1e300", "num_labels": "0"},
    {"epochs": "1e308", "learning_rate": "-1e30", "lora_r": "abc", "lora_dropout": "2", "max_steps": "1e30"},
    {"epochs": "", "learning_rate": "", "batch_size": "-5", "num_labels": "1e300"},
])
def test_absurd_params_beside_a_history_never_break_the_analysis(params):
    history = _frame(*[("loss", s, v) for s, v in zip(_STEPS, _DECAY)],
                     *[("eval_loss", s, v * 1.5) for s, v in zip(_STEPS[::5], _DECAY[::5])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis = analyze_history(history, params=params)
    assert 0 <= analysis.quality_score <= 100
    json.dumps(analysis.to_dict(), allow_nan=False)
    render_markdown(analysis)


# --- 2. every MLproject parameter, given a bad value: one line, no traceback, no RUNNING run -----------------

# (parameter, bad value): "{tmp}" is the test's tmp_path, where _fixtures() puts the files some values name.
BAD_VALUES: list[tuple[str, str]] = [
    ("model", "/no/such/path"), ("model", "builtin:nope"), ("model", ""),
    ("data", "/no/such.csv"), ("data", "builtin:nope"), ("data", "{tmp}/nolabel.csv"), ("data", "{tmp}/two_rows.csv"),
    ("data", "{tmp}/notes.txt"), ("data", ""),
    ("task", "regression"), ("task", ""),
    ("epochs", "-1"), ("epochs", "abc"), ("epochs", "inf"), ("epochs", "0"),
    ("max_steps", "-3"), ("max_steps", "2.5"), ("max_steps", "nan"),
    ("learning_rate", "0"), ("learning_rate", "nan"), ("learning_rate", "-1e-3"), ("learning_rate", "fast"),
    ("batch_size", "0"), ("batch_size", "2.5"), ("batch_size", "-16"),
    ("max_length", "0"), ("max_length", "1e999"),
    ("lora_r", "0"), ("lora_r", "8.5"), ("lora_r", "1e9"),
    ("lora_alpha", "0"), ("lora_alpha", "-16"),
    ("lora_dropout", "1.5"), ("lora_dropout", "-0.1"), ("lora_dropout", "1"),
    ("target_modules", "nonexistent_module"), ("target_modules", " "), ("target_modules", ","),
    ("warmup_ratio", "1"), ("warmup_ratio", "-0.1"),
    ("weight_decay", "-0.01"), ("weight_decay", "nan"),
    ("max_grad_norm", "-1"), ("max_grad_norm", "inf"),
    ("eval_fraction", "1.0"), ("eval_fraction", "-0.1"),
    ("eval_steps", "-1"), ("eval_steps", "0.5"),
    ("logging_steps", "0"), ("logging_steps", "-2"),
    ("seed", "-1"), ("seed", "nan"), ("seed", "1e20"),
    ("notify", "notaurl://x"), ("notify", "{tmp}/no-such-notify.yaml"), ("notify", "{tmp}/bad.yaml"),
    ("notify", "{tmp}/empty.yaml"),
    ("stall_minutes", "-5"), ("stall_minutes", "abc"), ("stall_minutes", "inf"),
    ("output_dir", "{tmp}/afile"), ("output_dir", "{tmp}/afile/sub"), ("output_dir", ""),
    ("stop_on", "nans"), ("stop_on", "overfitting,sometimes"),
    ("stop_patience", "0"), ("stop_patience", "1.5"),
    ("heartbeat_seconds", "-1"), ("heartbeat_seconds", "0.01"), ("heartbeat_seconds", "inf"),
    ("system_metrics_seconds", "-5"), ("system_metrics_seconds", "0.5"),
    ("samples", "-1"), ("samples", "2.5"), ("sample_prompts", "{tmp}/no-such-prompts.txt"),
    ("sample_tokens", "0"), ("sample_seconds", "0"), ("sample_seconds", "-1"),
    ("judge", "gpt-4"), ("judge", "openai:/judge-model"), ("judge_url", "notaurl"),
    ("judge_url", "http://user:secret@127.0.0.1:1/v1"), ("judge_guidelines", "@{tmp}/no-such-rubric.txt"),
    ("judge_timeout", "0"), ("judge_timeout", "nan"),
    # names the file system refuses outright (Path.exists raises ENAMETOOLONG instead of answering False)
    ("model", "./" + "m" * 300), ("data", "d" * 300 + ".csv"), ("output_dir", "o" * 300),
]


PROGRESS_BAR = re.compile(r"^[\w ]+:\s+\d+%\|")


def _mlproject_parameters() -> list[str]:
    return list(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]["parameters"])


def _fixtures(tmp) -> None:
    (tmp / "afile").write_text("a file, not a directory\n")
    (tmp / "nolabel.csv").write_text("sentence,label\nhello,a\nworld,b\nfoo,a\nbar,b\n")
    (tmp / "two_rows.csv").write_text("text,label\nhello,a\nworld,b\n")
    (tmp / "notes.txt").write_text("text,label\nhello,a\n")
    (tmp / "bad.yaml").write_text("urls:\n  - json://127.0.0.1:1/hook:\n      tag: [unclosed\n")
    (tmp / "empty.yaml").write_text("urls: []\n")


def _runs(db):
    """Every run in the sqlite store at ``db`` ([] when the job never created the store)."""
    if not db.exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _train(tmp, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "tracking.cli", *(["--debug"] if debug else []), "train", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


def _args(tmp, param: str, value: str) -> list[str]:
    args = [f"--{param.replace('_', '-')}", value.format(tmp=tmp)]
    if param != "output_dir":
        args += ["--output-dir", str(tmp / "out")]
    return args


def test_the_bad_value_table_covers_every_mlproject_parameter():
    assert _mlproject_parameters(), "MLproject's main entry point declares no parameters"
    assert set(_mlproject_parameters()) <= {param for param, _ in BAD_VALUES}
    assert {param for param, _ in BAD_VALUES} <= set(_mlproject_parameters())


@pytest.mark.parametrize("param, value", BAD_VALUES, ids=[f"{p}={(v or 'empty')[:40]}" for p, v in BAD_VALUES])
def test_a_bad_parameter_is_refused_in_one_line_naming_it_before_any_mlflow_run(tmp_path, monkeypatch, param, value):
    """In process, through click's test runner (the same ``main`` the console script runs); the subprocess
    path is covered by the --debug test below and by the ``mlflow run`` cases."""
    from click.testing import CliRunner

    from tracking.cli import main

    _fixtures(tmp_path)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, ["train", *_args(tmp_path, param, value)])
    shown = f"{param} / --{param.replace('_', '-')}"
    assert done.exit_code != 0, f"{param}={value!r} was accepted:\n{done.output[-2000:]}"
    assert isinstance(done.exception, SystemExit), repr(done.exception)
    assert "Traceback" not in done.output, done.output[-3000:]
    # transformers' "Loading weights" bar precedes the one error that needs the model (target_modules)
    lines = [line for line in done.stderr.strip().splitlines() if not PROGRESS_BAR.match(line)]
    assert len(lines) == 1, f"stderr is not one line:\n{done.stderr[-3000:]}"
    assert lines[0].startswith("peft-studio: error: "), lines[0]
    assert param in lines[0] or f"--{param.replace('_', '-')}" in lines[0], f"{lines[0]!r} does not name {shown}"
    assert not [r for r in _runs(tmp_path / "mlflow.db")], "a run was created before the setting was checked"


def test_debug_shows_the_traceback_of_a_bad_parameter(tmp_path):
    done = _train(tmp_path, "--epochs", "-1", "--output-dir", str(tmp_path / "out"), debug=True)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigError: epochs must not be negative" in done.stderr


def test_a_bad_notify_url_is_named_before_the_data_mlflow_or_the_scoring_code_is_loaded(tmp_path):
    """A typo in --notify is the commonest bad setting: named in a fraction of a second, not after the imports of
    the data check (pyarrow), the tracking-server check (MLflow) and the guard's rules (scipy, pandas)."""
    code = ("import sys\nfrom tracking.cli import main\n"
            "try:\n    main(['train', '--notify', 'notaurl://x', '--output-dir', sys.argv[1]])\n"
            "except SystemExit as exc:\n    print('exit', exc.code)\n"
            "print(sorted(m for m in ('mlflow', 'scoring', 'pandas', 'pyarrow', 'torch') if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "PEFT_STUDIO_NOTIFY"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.stderr.startswith("peft-studio: error: notify: 'notaurl://...' is not a valid apprise URL"), done.stderr
    assert done.stdout.splitlines()[-2:] == ["exit 2", "[]"], done.stdout


MLFLOW_RUN_CASES = [("lora_dropout", "1.5"), ("notify", "notaurl://x")]  # the CLI table above covers every param


@pytest.mark.slow
@pytest.mark.parametrize("param, value", MLFLOW_RUN_CASES, ids=[f"{p}={v}" for p, v in MLFLOW_RUN_CASES])
def test_mlflow_run_with_a_bad_parameter_fails_its_run_and_shows_our_line(tmp_path, param, value):
    _fixtures(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    params = {"output_dir": str(tmp_path / "out"), param: value.format(tmp=tmp_path)}
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "bad",
               *(arg for k, v in params.items() for arg in ("-P", f"{k}={v}"))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    ours = [line for line in output.splitlines() if line.startswith("peft-studio: error: ")]
    assert len(ours) == 1 and param in ours[0], output[-3000:]
    runs = _runs(tmp_path / "mlflow.db")
    assert runs and all(r.info.status == "FAILED" for r in runs), [r.info.status for r in runs]
