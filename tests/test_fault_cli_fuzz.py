"""Every command of the CLI, fuzzed: any argv built from its real options and hostile values ends in help,
a one-line ``peft-studio: error:`` with exit code 2 (1 for ``notify test`` when a channel fails), or a clean
outcome; never a traceback.

Runs in-process through click's ``CliRunner`` against a sqlite store in a temporary folder. ``train``
always gets a bad ``--data`` so that no example trains; channel URLs point only at a refused port on
127.0.0.1, so nothing leaves this machine.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tracking.cli import main

LOOPBACK_CHANNEL = "json://127.0.0.1:9/hook"  # the discard port: refused here


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "folder.csv").mkdir()
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (root / "no_text.csv").write_text("a,b\n1,2\n")
    (root / "wrong_shape.jsonl").write_text('{"run_id": "abc"}\n{"metric": [1]}\n')
    (root / "notify.yaml").write_text("urls: [[[\n")
    return root


def hostile_values(root) -> st.SearchStrategy[str]:
    return st.sampled_from([
        "", " ", "0", "-1", "1e999", "-1e999", "nan", "inf", "abc", "-", "--", "ü", "x" * 300, ",,,", "a,b",
        "1,2", "builtin:nope", "foo://bar", LOOPBACK_CHANNEL, "/nonexistent/x.csv", str(root / "folder.csv"),
        str(root / "binary.jsonl"), str(root / "no_text.csv"), str(root / "wrong_shape.jsonl"),
        str(root / "notify.yaml"), "params.lora_r = '8'", "params.x ==", "deadbeef" * 4,
    ]) | st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


COMMANDS = {
    ("train",): main.commands["train"],
    ("analyze",): main.commands["analyze"],
    ("compare",): main.commands["compare"],
    ("upload",): main.commands["upload"],
    ("notify", "test"): main.commands["notify"].commands["test"],
}
BAD_DATA = ["/nonexistent/x.csv", "folder.csv", "binary.jsonl", "no_text.csv", "builtin:nope"]


@st.composite
def argvs(draw, root) -> list[str]:
    path = draw(st.sampled_from(sorted(COMMANDS)))
    command: click.Command = COMMANDS[path]
    argv = list(path)
    for param in command.params:
        if param.name in ("help", "data") or not (param.required or draw(st.booleans())):
            continue
        if isinstance(param, click.Argument):
            argv.append(draw(hostile_values(root)))
        elif param.is_flag:
            argv.append(param.opts[0])
        else:
            argv += [param.opts[0], draw(hostile_values(root))]
    if path == ("train",):  # a bad data source: no example trains a model
        bad = draw(st.sampled_from(BAD_DATA))
        argv += ["--data", bad if bad.startswith(("/", "builtin:")) else str(root / bad)]
    return argv


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@example(data=None).via("the reported cases")
def test_no_argv_ends_in_a_traceback(places, monkeypatch, data):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{places / 'mlflow.db'}")
    monkeypatch.delenv("PEFT_STUDIO_NOTIFY", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    if data is None:
        cases = [["compare", "--run-ids", "deadbeef"], ["compare", "--run-ids", "a,b"],
                 ["train", "--data", str(places / "folder.csv")], ["train", "--data", str(places / "binary.jsonl")],
                 ["upload", str(places / "wrong_shape.jsonl")], ["upload", str(places / "binary.jsonl")],
                 ["notify", "test", LOOPBACK_CHANNEL, "--timeout", "nan"],
                 ["upload", "~0"], ["train", "--model", "~nosuchuser/model"]]  # an unknown ~user
    else:
        cases = [data.draw(argvs(places), label="argv")]
    for argv in cases:
        result = CliRunner().invoke(main, argv)
        output = result.output
        assert "Traceback" not in output, (argv, output)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{argv} raised {result.exception!r}") from result.exception
        assert result.exit_code in (0, 1, 2), (argv, result.exit_code, output)
        if result.exit_code == 2:
            lines = [line for line in output.splitlines() if line.strip()]
            assert lines and (lines[-1].startswith(("peft-studio: error: ", "Error: "))), (argv, output)
        if result.exit_code == 1:  # only a channel that failed its test message
            assert argv[:2] == ["notify", "test"] and "FAILED" in output, (argv, output)
