"""End to end: the MLflow web UI shows what `analyze_run` wrote, driven by a headless Chromium.

A real `mlflow server` (the `mlflow_server` fixture) gets a run with a decaying loss curve, `analyze_run` writes
the quality score, tags, description and artifacts, and the Debian `/usr/bin/chromium`, driven by the Playwright
Python package (no `playwright install`: no browser download), checks:

* the experiment's runs table shows the `quality_score` metric column with the score. The UI opens an
  experiment in its GenAI view unless the URL says `?workflowType=machine_learning`, and the runs table shows
  no metric columns by default (they are kept per experiment in the browser's localStorage, not in the URL):
  the test turns them on the way a user does, "Columns" -> tick `quality_score`;
* the run page shows the Markdown report as the run's description;
* the run's Artifacts tab lists `quality/` with `analysis.json`, `report.md` and `loss_curve.png`.

Screenshots go to the test's tmp_path; with PEFT_STUDIO_SCREENSHOTS=docs they are also written to
docs/mlflow-ui-runs.png and docs/mlflow-ui-run.png. The browser only ever reaches the server on 127.0.0.1:
every other request is aborted, and Chromium's own resolver is pinned to 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tracking.analyze import analyze_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
TIMEOUT_MS = 20_000
RUN_NAME = "lora-ui-check"
ARTIFACTS = ("analysis.json", "report.md", "loss_curve.png")
# The MLflow Assistant side panel opens itself on the first visit and covers a third of the page.
CLOSE_ASSISTANT = """
try {
  window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
} catch (e) {}
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    """Set before `mlflow_server` starts (autouse fixtures come first), so the server and client stay local."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


def _decay(n: int, start: float = 2.0, floor: float = 0.4, every: int = 1) -> list[tuple[int, float]]:
    return [(s, floor + (start - floor) * math.exp(-6 * s / n)) for s in range(every, n + 1, every)]


def _analyzed_run(client: MlflowClient) -> tuple[str, str]:
    experiment_id = client.create_experiment("ui-check")
    run_id = client.create_run(experiment_id, run_name=RUN_NAME).info.run_id
    curves = {
        "loss": _decay(100),
        "eval_loss": [(s, v + 0.02) for s, v in _decay(100, every=10)],
        "grad_norm": [(s, 1.0) for s in range(1, 101)],
        "epoch": [(s, s / 50) for s in range(1, 101)],
    }
    client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, points in curves.items() for s, v in points])
    client.log_param(run_id, "learning_rate", "0.0002")
    analyze_run(MlflowClient(), run_id)
    return experiment_id, run_id


def _shown(value: float) -> str:
    """How the UI prints a metric value (JavaScript's Number -> string: 80.0 is '80')."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _save(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("PEFT_STUDIO_SCREENSHOTS") == "docs":
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(path, docs / name)


def test_mlflow_ui_shows_the_quality_analysis(mlflow_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright  # pip install playwright (no `playwright install`)

    client = MlflowClient()
    experiment_id, run_id = _analyzed_run(client)
    run = client.get_run(run_id)
    score = run.data.metrics["quality_score"]
    heading = run.data.tags["mlflow.note.content"].splitlines()[0].lstrip("# ").strip()
    assert heading.startswith("Training quality")

    blocked: list[str] = []

    def only_the_server(route):
        url = route.request.url
        if url.startswith(f"{mlflow_server}/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.route("**/*", only_the_server)
            page.add_init_script(CLOSE_ASSISTANT)

            # -- the experiment's runs table, with the quality_score column turned on
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning")
            grid = page.locator(".ag-root")
            expect(grid.get_by_text(RUN_NAME)).to_be_visible()
            page.get_by_role("button", name="Columns").click()
            columns = page.locator('[data-component-id="mlflow.experiment_page.runs_table.column_selector"]')
            # untick the wide attribute columns so the metric columns fit, tick the ones to show
            for column in ("Dataset", "Source", "Models", "quality_score", "loss", "eval_loss", "learning_rate"):
                columns.locator(f'span[title="{column}"]').click()
            page.keyboard.press("Escape")
            expect(columns).to_be_hidden()
            cell = grid.locator('.ag-cell[col-id="metrics.`quality_score`"]')
            expect(grid.locator('.ag-header-cell[col-id="metrics.`quality_score`"]')).to_contain_text("quality_score")
            expect(cell).to_have_text(_shown(score))
            _save(page, tmp_path, "mlflow-ui-runs.png")

            # -- the run page: the report is the run's description
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")
            description = page.get_by_text(heading, exact=True).first
            expect(description).to_be_visible()
            description.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "mlflow-ui-run-description.png"))

            # -- the Artifacts tab lists quality/ and its three files
            page.get_by_role("tab", name="Artifacts").click()
            expect(page).to_have_url(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"
                                     f"?workflowType=machine_learning")
            folder = page.get_by_text("quality", exact=True)
            expect(folder).to_be_visible()
            folder.click()
            for name in ARTIFACTS:
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            page.get_by_text("report.md", exact=True).click()
            expect(page.get_by_text("quality/report.md", exact=True)).to_be_visible()
            expect(page.get_by_role("heading", name=heading)).to_be_visible()  # the report, rendered
            _save(page, tmp_path, "mlflow-ui-run.png")
        finally:
            browser.close()
    if blocked:
        print(f"blocked requests that did not go to {mlflow_server}: {blocked}")
