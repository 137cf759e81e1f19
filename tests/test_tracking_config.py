"""Settings: one list for MLproject, CLI and TrainConfig; bad values refused in one line before training."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields

import pytest
import tomllib
import yaml
from conftest import REPO
from mlflow.tracking import MlflowClient

from tracking.config import ConfigError, TrainConfig


def test_mlproject_main_parameters_are_exactly_the_train_config():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    declared = project["entry_points"]["main"]["parameters"]
    assert list(declared) == [f.name for f in fields(TrainConfig)]
    for f in fields(TrainConfig):
        assert str(declared[f.name]["default"]) == str(f.default), f.name
        assert f"--{f.name.replace('_', '-')} {{{f.name}}}" in project["entry_points"]["main"]["command"]


def test_conda_env_pins_the_same_dependencies_as_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    name = lambda spec: re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()  # noqa: E731
    assert {name(d) for d in pip_deps} == {name(d) for d in pyproject["project"]["dependencies"]}
    assert "torch==2.13.0" in pip_deps


@pytest.mark.parametrize("settings, message", [
    ({"task": "regression"}, "task must be one of classification, causal-lm"),
    ({"learning_rate": "0"}, "learning_rate must be positive"),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"batch_size": "2.5"}, "batch_size must be a whole number"),
    ({"epochs": "0", "max_steps": "0"}, "set epochs > 0 or max_steps > 0"),
    ({"lora_dropout": "1.2"}, r"lora_dropout must be in \[0, 1\)"),
    ({"eval_fraction": "-0.1"}, r"eval_fraction must be in \[0, 1\)"),
    ({"max_steps": "-3"}, "max_steps must not be negative"),
    ({"seed": "nan"}, "seed must be a finite number"),
    ({"target_modules": " "}, "target_modules must be 'auto'"),
    ({"colour": "blue"}, "unknown setting 'colour'"),
])
def test_invalid_settings_name_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_strings(settings)


def test_notify_urls_are_not_logged_as_params():
    params = TrainConfig(notify="slack://T000/B000/XXXXsecretXXXX").to_params()
    assert params["notify"] == "(configured)"
    assert "XXXXsecretXXXX" not in str(params)


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.csv"], "data file 'missing.csv' does not exist"),
    (["--learning-rate", "-1"], "learning_rate must be positive"),
    (["--model", "/nonexistent/model-dir"], "could not load model '/nonexistent/model-dir'"),
    (["--notify", "slak://nothing"], "is not a valid apprise URL"),
])
@pytest.mark.slow
def test_train_command_refuses_bad_input_in_one_line_before_any_run(tracking_uri, tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "train", *args, "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("peft-studio: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    client = MlflowClient(tracking_uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_wrong_columns_are_named(tmp_path):
    from tracking.data import load_text_data

    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhello,a\nworld,b\nfoo,a\nbar,b\n")
    with pytest.raises(ConfigError, match="has no 'text' column .*columns: sentence, label"):
        load_text_data(TrainConfig(data=str(path)))
    path.write_text("text\nhello\nworld\nfoo\nbar\n")
    with pytest.raises(ConfigError, match="no 'label' column"):
        load_text_data(TrainConfig(data=str(path)))
    assert len(load_text_data(TrainConfig(data=str(path), task="causal-lm", eval_fraction=0.25)).eval_texts) == 1


@pytest.mark.parametrize("command", [["train"], ["analyze", "abc"], ["compare", "--experiment", "x"]])
@pytest.mark.slow
def test_an_unreachable_tracking_server_is_one_line_before_any_work(command, tmp_path, monkeypatch):
    from receivers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:pw@127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-m", "tracking.cli", *command], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("peft-studio: error: cannot reach the MLflow tracking server at http://***@127.0.0.1:")
    assert "pw" not in line
