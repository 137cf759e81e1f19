"""Secrets in notification URLs are used, and never stored or printed.

Real training jobs (the CLI as a subprocess, a few steps on the built-in model) get channels holding a
password and a token, given three ways: ``--notify`` on the command line, and with ``--debug`` (DEBUG
level, where apprise and urllib3 log request URLs) the ``PEFT_STUDIO_NOTIFY`` variable and an apprise
YAML config file. Working channels: a JSON webhook with ``user:PASSWORD@``, an SMTP server
with ``PASSWORD``, a Mattermost (Slack-compatible) incoming webhook whose token ``SLACK_TOKEN`` is part of
the URL path. Broken ones: a webhook answering 500, and refused ports for a webhook and a Mattermost hook,
all with the same secrets, so that failure warnings are logged.

Afterwards every place a secret could end up is searched: the run's params and tags, every artifact
(``notifications/events.jsonl`` included), the tracking store's database file itself, the output
directory, and the job's stdout and stderr. The receivers must have seen the secrets (so the search
cannot pass because nothing was sent).

Not tested for absence: ``mlflow run -P notify=<url with a token>`` makes MLflow itself log the raw
param; the job warns about it (tested here) and the README points to PEFT_STUDIO_NOTIFY or a file.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, new_sqlite_store
from receivers import (
    PASSWORD,
    SECRETS,
    SLACK_TOKEN,
    HTTPReceiver,
    SMTPReceiver,
    free_port,
)

pytestmark = [pytest.mark.slow,  # every test here trains a model or starts a server
              pytest.mark.xdist_group("fault-secrets")]  # one process trains the module's three jobs once

USER = "trainer"
# what a leak could look like besides the plain values: HTTP Basic and SMTP AUTH PLAIN/LOGIN encodings
LEAK_FORMS = {
    *SECRETS,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    base64.b64encode(PASSWORD.encode()).decode(),
}
TRAIN = ["--max-steps", "4", "--logging-steps", "1", "--eval-steps", "4", "--batch-size", "8"]
MODES = ("cli", "env-debug", "yaml-debug")  # --notify plain; the variable and a YAML file at DEBUG level


@dataclass
class Job:
    """One training job, its receivers and everything it left behind."""

    mode: str
    root: Path
    hook: HTTPReceiver = field(default_factory=HTTPReceiver)
    mattermost: HTTPReceiver = field(default_factory=HTTPReceiver)
    failing: HTTPReceiver = field(default_factory=HTTPReceiver)
    smtp: SMTPReceiver = field(default_factory=SMTPReceiver)
    done: subprocess.CompletedProcess | None = None

    @property
    def store(self) -> Path:
        return self.root / "mlflow.db"

    def urls(self) -> dict[str, str]:
        self.failing.status = 500
        return {
            "webhook": self.hook.url(userinfo=f"{USER}:{PASSWORD}"),
            "mail": self.smtp.url(USER, PASSWORD, "me@example.com", "bot@example.com"),
            "mattermost": f"mmost://127.0.0.1:{self.mattermost.port}/{SLACK_TOKEN}",
            "failing webhook": self.failing.url(userinfo=f"{USER}:{PASSWORD}"),
            "refused webhook": f"json://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/down",
            "refused mattermost": f"mmost://127.0.0.1:{free_port()}/{SLACK_TOKEN}",
        }

    def run(self) -> Job:
        config = self.root / "config"
        config.mkdir()
        urls = self.urls()
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY")}
        env.update(MLFLOW_TRACKING_URI=new_sqlite_store(self.store), HF_HUB_OFFLINE="1")
        args = [*TRAIN, "--output-dir", str(self.root / "out")]
        if self.mode.startswith("cli"):
            args += ["--notify", " ".join(urls.values())]
        elif self.mode.startswith("env"):
            env["PEFT_STUDIO_NOTIFY"] = ", ".join(urls.values())
        else:
            path = config / "notify.yaml"  # the one file allowed to hold the secrets
            lines = ["urls:"]
            for name, url in urls.items():
                lines.append(f'  - "{url}":')
                lines.append("      tag: completion, error" if "mail" in name else "      tag: all")
            path.write_text("\n".join(lines) + "\n")
            args += ["--notify", str(path)]
        debug = ["--debug"] if self.mode.endswith("debug") else []
        try:
            self.done = subprocess.run([sys.executable, "-m", "tracking.cli", *debug, "train", *args],
                                       capture_output=True, text=True, cwd=self.root, env=env, timeout=600)
        finally:
            for receiver in (self.hook, self.mattermost, self.failing, self.smtp):
                receiver.close()
        return self


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, Job]:
    """Every mode's job, run two at a time (each is a real training run of a few steps)."""
    pending = [Job(mode, tmp_path_factory.mktemp(mode)) for mode in MODES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {job.mode: job for job in pool.map(Job.run, pending)}


def _hits(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return sorted(form for form in LEAK_FORMS if form.encode() in data)


def _only_run(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return client, runs[0]


@pytest.mark.parametrize("mode", MODES)
def test_notify_secrets_are_used_but_never_stored_or_printed(jobs, mode, tmp_path):
    job = jobs[mode]
    done = job.done
    assert done is not None and done.returncode == 0, (done.stderr if done else "")[-4000:]

    # the secrets were really used: each working receiver got the run's messages with them
    assert job.hook.received, "the webhook got nothing"
    assert job.hook.received[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(
        f"{USER}:{PASSWORD}".encode()).decode()
    assert job.mattermost.received and all(r["path"] == f"/hooks/{SLACK_TOKEN}" for r in job.mattermost.received)
    assert job.smtp.messages and (USER, PASSWORD) in job.smtp.logins
    assert job.failing.received, "the failing webhook was never tried"

    # ... and the broken channels produced the warnings that could have echoed them
    assert "not delivered to" in done.stderr
    if mode.endswith("debug"):
        # apprise logs at DEBUG here; the requests themselves (urllib3's lines, URLs and tokens) are made by the
        # send helper process, whose output is discarded (`notify test`, in-process, shows them redacted below)
        assert "DEBUG apprise" in done.stderr

    exposed: dict[str, list[str]] = {}
    exposed["stdout"] = _hits(done.stdout)
    exposed["stderr"] = _hits(done.stderr)
    for line in done.stderr.splitlines():  # name the offending lines in the failure message
        if _hits(line):
            exposed.setdefault("stderr lines", []).append(line[:300])

    _, run = _only_run(job.store)
    assert run.info.status == "FINISHED"
    assert int(run.data.params["notify_channels"]) == 6
    exposed["params"] = _hits(repr(run.data.params))
    exposed["tags"] = _hits(repr(run.data.tags))

    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts"),
                                                     tracking_uri=f"sqlite:///{job.store}"))
    artifacts = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()}
    assert {"notifications/events.jsonl", "quality/analysis.json", "adapter/adapter_config.json"} <= set(artifacts)
    events = artifacts["notifications/events.jsonl"].read_text()
    assert '"ok": false' in events and '"ok": true' in events  # failures were recorded next to deliveries
    for name, path in artifacts.items():
        exposed[f"artifact {name}"] = _hits(path.read_bytes())

    # everything the job wrote on disk: the sqlite store, artifact folders, checkpoints, the adapter
    for path in job.root.rglob("*"):
        if path.is_file() and path.parent.name != "config":
            exposed[f"file {path.relative_to(job.root)}"] = _hits(path.read_bytes())

    leaks = {where: hits for where, hits in exposed.items() if hits}
    assert not leaks, f"secrets leaked ({mode}): {leaks}"


def test_mlflow_run_with_a_secret_in_the_notify_param_warns_to_use_the_variable(tmp_path):
    """`mlflow run -P notify=<url with a password>`: MLflow logs the raw param (not preventable), so the job
    says where such URLs belong. The channel still works."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    with HTTPReceiver() as hook:
        params = {"notify": hook.url(userinfo=f"{USER}:{PASSWORD}"), "max_steps": "2", "logging_steps": "1",
                  "eval_fraction": "0", "batch_size": "8", "output_dir": str(tmp_path / "out")}
        command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                   "--experiment-name", "secret-param", *(a for k, v in params.items() for a in ("-P", f"{k}={v}"))]
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert hook.received
    assert "MLflow logged the notify URLs of `-P notify=...` as a run param" in done.stderr
    assert "PEFT_STUDIO_NOTIFY" in done.stderr


BAD_SPECS = {
    "unknown service": f"slak://{USER}:{PASSWORD}@hooks.example.com/{SLACK_TOKEN}",
    "invalid token": f"mmost://127.0.0.1/{SLACK_TOKEN}/ discord://{SLACK_TOKEN}",
    "invalid mail": f"mailto://{USER}:{PASSWORD}@?to=",
    "broken YAML": f"urls:\n  - json://{USER}:{PASSWORD}@127.0.0.1/hook:\n      tag: [unclosed\n",
}


@pytest.mark.parametrize("name", BAD_SPECS)
def test_a_refused_channel_with_secrets_is_named_redacted_also_in_the_debug_traceback(name, tmp_path):
    spec = BAD_SPECS[name]
    if spec.startswith("urls:"):
        (tmp_path / "notify.yaml").write_text(spec)
        spec = str(tmp_path / "notify.yaml")
    env = {k: v for k, v in os.environ.items() if k != "PEFT_STUDIO_NOTIFY"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    for debug in ([], ["--debug"]):
        done = subprocess.run([sys.executable, "-m", "tracking.cli", *debug, "train", "--notify", spec,
                               "--output-dir", str(tmp_path / "out")],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert done.returncode != 0
        if debug:
            assert "ChannelError: notify:" in done.stderr
        else:
            assert done.stderr.startswith("peft-studio: error: notify:")
        assert not _hits(done.stdout + done.stderr), done.stderr[-3000:]


def test_notify_test_of_unreachable_channels_with_secrets_prints_them_redacted_at_debug_level(tmp_path):
    spec = f"json://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/x mmost://127.0.0.1:{free_port()}/{SLACK_TOKEN}"
    done = subprocess.run([sys.executable, "-m", "tracking.cli", "--debug", "notify", "test", spec, "--timeout", "5"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1
    assert done.stdout.count("FAILED") == 2 and "DEBUG apprise" in done.stderr
    assert not _hits(done.stdout + done.stderr), done.stdout + done.stderr[-3000:]
