"""Every command the README shows is run here, as a user would type it, with only these substitutions:

* what needs the internet gets its local stand-in: a hub model id becomes the built-in model's local folder
  (``distilbert-base-uncased``) or a tiny local GPT-2 (``gpt2``), a Slack URL becomes a webhook receiver on
  127.0.0.1, ``mlflow-host:5000`` a real ``mlflow server`` on 127.0.0.1;
* the user's own files (``tickets.csv``, ``notes.jsonl``) are written from the built-in data set (``mlflow run``
  gets their full path: it runs the job in the project's folder);
* placeholders (``<run_id>``, ``A,B``, ``...``) become the runs trained here;
* ``mlflow run`` also gets ``-P output_dir=...`` and a throwaway tracking store, so tests never write into the
  checkout, and ``-P max_steps=...`` (with ``eval_steps``, and ``logging_steps`` for the quick start, which
  conftest's ``quick_start_run`` runs once for this file and ``tests/test_tracking_job.py``) to keep the
  suite short (a whole default job, its length and score, is ``tests/test_tracking_job.py``'s to check);
  ``mlflow ui`` gets that store, a free loopback port and one worker process (``MLFLOW_WORKERS=1``);
  ``pip install`` runs with ``--dry-run`` (it must resolve, and must not change the environment the other
  tests run in); the README's test command is the one ``.ci/run`` runs, which CI runs.

One command is not run: plain ``mlflow run .`` builds a conda environment, and conda cannot be installed on
this machine; ``tests/test_tracking_config.py`` keeps ``conda.yaml`` identical to ``pyproject.toml``.

``test_every_readme_command_is_run_here`` fails when the README shows a command this file does not run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from receivers import HTTPReceiver, free_port

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
RUN_SUMMARY = re.compile(r"^Run ([0-9a-f]{32}): quality score \d+(\.\d+)?/100 \(", re.MULTILINE)


def readme_commands() -> set[str]:
    """Each command line of the README's ``bash`` blocks (``&&`` splits one line into its commands; comments
    and ``export`` lines, which only set the environment, are left out) and each inline ``peft-studio`` or
    ``mlflow`` command in the text that is complete (no ``...``)."""
    commands: set[str] = set()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith(("#", "export ")):
                commands |= {part.strip() for part in line.split("&&")}
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    for inline in re.findall(r"`((?:peft-studio|mlflow) [^`]*)`", prose):
        if "..." not in inline:
            commands.add(inline.strip())
    return commands


RUN_HERE = {
    "pip install torch==2.13.0 -e .", "pip install torch==2.13.0 -e '.[test]'", "python -m pytest -n auto",
    "mlflow run . --env-manager local", "mlflow ui",
    "mlflow run . --env-manager local -P model=distilbert-base-uncased -P data=tickets.csv -P epochs=3",
    "mlflow run . --env-manager local -P task=causal-lm -P model=gpt2 -P data=notes.jsonl -P target_modules=c_attn",
    "peft-studio train --model distilbert-base-uncased --data tickets.csv --epochs 3",
    "peft-studio analyze <run_id>", "peft-studio compare --experiment tuning", "peft-studio compare --run-ids A,B",
    "mlflow run . --env-manager local -P model=... -P data=...",
    "peft-studio notify test 'slack://TokenA/TokenB/TokenC/#training'",
    "mlflow run . --env-manager local -P stop_on=nan,divergence,overfitting",
    "peft-studio watch --once --notify notify.yaml",
}


NOT_RUN = {"mlflow run ."}  # needs conda (see the module docstring)


def test_every_readme_command_is_run_here():
    shown = readme_commands() - NOT_RUN
    assert shown, "no command found in the README: the extraction is broken"
    assert shown - RUN_HERE == set(), "README commands no test runs: add them to RUN_HERE and a test"
    assert RUN_HERE - shown == set(), "commands no longer in the README: drop them here"


def test_the_extraction_reads_blocks_chains_and_inline_commands():
    assert "mlflow run . --env-manager local" in readme_commands()  # after `pip install ... &&`
    assert "peft-studio analyze <run_id>" in readme_commands()  # its comment dropped
    assert not [c for c in readme_commands() if c.startswith(("export", "#"))]


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q -n auto" in ci or "python -m pytest -n auto" in ci
    assert "pip install -q -e '.[test]'" in ci and "pip install -q torch==2.13.0" in ci


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pip install torch==2.13.0 -e .", "pip install torch==2.13.0 -e '.[test]'"])
def test_the_install_commands_resolve_from_the_checkout(command):
    argv = [sys.executable, "-m", *shlex.split(command)]
    argv.insert(argv.index("install") + 1, "--dry-run")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch" not in re.sub(r"Requirement already satisfied: .*", "", done.stdout).split("Would install")[-1], (
        "pip would install another torch: " + done.stdout[-2000:])


# --- the jobs ---------------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch, tracking_uri):
    """A user's folder: their data files, a fresh tracking store (``tracking_uri``: for this process and its
    subprocesses), no leftover MLflow run variables."""
    with open(REPO / "tracking" / "data" / "support_tickets.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:40]
    with open(tmp_path / "tickets.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_shown(command: str, workspace: Path, substitutions: dict[str, str] | None = None,
              timeout: float = 900, shorter: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a README command in ``workspace`` after the substitutions this module's docstring lists;
    ``shorter``: ``-P`` settings that make a job shorter where its length is not what the command shows."""
    for old, new in (substitutions or {}).items():
        assert old in command, f"{old!r} is not in {command!r}"
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[:2] == ["mlflow", "run"]:
        argv[2] = str(REPO) if argv[2] == "." else argv[2]
        argv += ["-P", f"output_dir={workspace / 'outputs'}", *(a for s in shorter for a in ("-P", s))]
    argv = [sys.executable, "-m", "tracking.cli" if argv[0] == "peft-studio" else argv[0], *argv[1:]]
    done = subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=timeout, env=os.environ)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _finished_runs(experiment: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiments = [e for e in client.search_experiments() if experiment in (None, e.name)]
    return client.search_runs([e.experiment_id for e in experiments], "attributes.status = 'FINISHED'")


@pytest.mark.slow
@pytest.mark.xdist_group("quick-start")
def test_the_quick_start_job_trains_scores_and_prints_the_summary(quick_start_run):
    """conftest's ``quick_start_run`` runs this command (with -P output_dir and the shorter settings there)
    once for this test and tests/test_tracking_job.py."""
    assert "mlflow run . --env-manager local" in readme_commands()
    match = RUN_SUMMARY.search(quick_start_run.done.stdout)
    assert match, quick_start_run.done.stdout[-2000:]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(quick_start_run.uri).get_run(match.group(1))
    assert run.info.status == "FINISHED"
    assert "quality_score" in run.data.metrics and run.data.tags["quality.assessment"]


@pytest.mark.slow
def test_own_data_commands_then_analyze_and_both_compares(workspace, tiny_causal_lm, monkeypatch):
    from tracking.model import builtin_model_path

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tuning")
    model = {"distilbert-base-uncased": str(builtin_model_path())}
    # `mlflow run` runs the job in the project's folder: the user's files go by their full path
    run_shown("mlflow run . --env-manager local -P model=distilbert-base-uncased -P data=tickets.csv -P epochs=3",
              workspace, {**model, "data=tickets.csv": f"data={workspace / 'tickets.csv'}"})
    run_shown("peft-studio train --model distilbert-base-uncased --data tickets.csv --epochs 3", workspace, model)
    run_shown("mlflow run . --env-manager local -P task=causal-lm -P model=gpt2 -P data=notes.jsonl "
              "-P target_modules=c_attn", workspace,
              {"model=gpt2": f"model={tiny_causal_lm}", "data=notes.jsonl": f"data={workspace / 'notes.jsonl'}"})
    runs = _finished_runs("tuning")
    assert len(runs) == 3 and all("quality_score" in r.data.metrics for r in runs)
    assert {r.data.params["task"] for r in runs} == {"classification", "causal-lm"}

    first, second = (r.info.run_id for r in runs if r.data.params["task"] == "classification")
    analyzed = run_shown("peft-studio analyze <run_id>", workspace, {"<run_id>": first})
    assert f"Run {first}: quality score" in analyzed.stdout
    compared = run_shown("peft-studio compare --experiment tuning", workspace)
    assert all(r.info.run_id[:8] in compared.stdout for r in runs), compared.stdout[-2000:]  # a row per run
    ab = run_shown("peft-studio compare --run-ids A,B", workspace, {"A,B": f"{first},{second}"})
    assert first[:8] in ab.stdout and second[:8] in ab.stdout, ab.stdout[-2000:]


@pytest.mark.slow
def test_the_server_command_logs_to_the_server(workspace, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "my-finetunes")  # as the README's export lines
    done = run_shown("mlflow run . --env-manager local -P model=... -P data=...", workspace,
                     {"model=...": "model=builtin:all-MiniLM-L6-v2", "data=...": "data=builtin:support-tickets"},
                     shorter=("max_steps=6", "eval_steps=6"))
    run_id = RUN_SUMMARY.search(done.stdout).group(1)
    assert [r.info.run_id for r in _finished_runs("my-finetunes")] == [run_id]
    assert mlflow_server.startswith("http://127.0.0.1:")


def test_the_notify_test_command_reaches_the_channel(workspace):
    with HTTPReceiver() as webhook:
        done = run_shown("peft-studio notify test 'slack://TokenA/TokenB/TokenC/#training'", workspace,
                         {"slack://TokenA/TokenB/TokenC/#training": webhook.url()})
        assert [request["json"]["title"] for request in webhook.wait_for(1)] == ["peft-studio test message"]
    assert "OK" in done.stdout or "ok" in done.stdout.lower(), done.stdout


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_page(workspace):
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]]
    # MLflow's job runner (huey, 8 processes for its GenAI jobs) is not what this command is run for; off, the
    # server starts with a third of the CPU (bench/_mlflow.py's MlflowServer says the same). One uvicorn worker
    # (MLFLOW_WORKERS, the --workers default of 4 otherwise) serves the page as well: 5.7 s of CPU instead of 13.5
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_WORKERS": "1"}
    server = subprocess.Popen(argv, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"<html" in page.read().lower()
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_stop_on_command_runs_a_guarded_job(workspace):
    done = run_shown("mlflow run . --env-manager local -P stop_on=nan,divergence,overfitting", workspace,
                     shorter=("max_steps=8", "eval_steps=4"))
    run_id = RUN_SUMMARY.search(done.stdout).group(1)
    (run,) = [r for r in _finished_runs() if r.info.run_id == run_id]
    assert run.data.params["stop_on"] == "nan,divergence,overfitting"
    assert "quality_score" in run.data.metrics


@pytest.mark.slow  # two `peft-studio watch` subprocesses, about 7 s
def test_the_watch_command_reports_a_run_that_died_silently(workspace):
    from mlflow.tracking import MlflowClient

    from tracking.heartbeat import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG
    from tracking.watch import DEAD_TAG

    client = MlflowClient()
    run = client.create_run(client.create_experiment("silent"))  # what a job killed with SIGKILL leaves
    run_id = run.info.run_id
    for step in range(1, 41):
        client.log_metric(run_id, "loss", 2.0 / step + 0.3, step=step)
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - 3600:.0f}")
    client.set_tag(run_id, HEARTBEAT_INTERVAL_TAG, "60")
    with HTTPReceiver() as webhook:
        (workspace / "notify.yaml").write_text(f"urls:\n  - {webhook.url()}\n")
        run_shown("peft-studio watch --once --notify notify.yaml", workspace)
        (message,) = webhook.wait_for(1)
        run_shown("peft-studio watch --once --notify notify.yaml", workspace)  # reported once, not again
        time.sleep(0.5)
        assert len(webhook.received) == 1
    assert "40" in message["json"]["message"], message["json"]  # the last step it reached
    after = client.get_run(run_id)
    assert after.info.status == "FAILED" and after.data.tags[DEAD_TAG].startswith("no heartbeat since")
