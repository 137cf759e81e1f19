"""The optional LLM judge of the final samples, through MLflow's judge API (``mlflow.genai.scorers``).

Two built-in scorers judge each sample of the last milestone: ``Guidelines`` with the run's rubric
(``judge_guidelines``, a short default otherwise) and, where the sample has a reference, ``Correctness``.
Each verdict is yes/no with a rationale; a verdict scores 1 for yes and 0 for no.

The judge must never cost the run: it runs on a daemon thread under one deadline (``judge_timeout``); the
first failure (an HTTP error after MLflow's retries, a hang, an answer that is not a verdict) stops it, and
the result carries the reason instead of verdicts. The key stays in the environment (OPENAI_API_KEY, read by
MLflow's OpenAI provider); every text kept from an error has it masked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = ("The response continues the request with fluent, on-topic text. It does not repeat the same "
                  "words or phrases over and over, and it is not empty.")
VERDICTS_TABLE = "evaluation/judge_verdicts.json"
METRIC_PREFIX = "judge/"
MEAN_METRIC = "judge/mean_score"
KEY_VARIABLES = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MISTRAL_API_KEY")
MAX_REASON_CHARS = 300
# MLflow looks up the judge model's context size and cost in a model catalog it fetches from github.com unless
# this is empty; the copy bundled with MLflow is enough, and the judge talks to nothing but its own endpoint.
CATALOG_VARIABLE = "MLFLOW_MODEL_CATALOG_URI"


@dataclass
class JudgeResult:
    model: str
    verdicts: list[dict] = field(default_factory=list)  # prompt, output, reference, scorer, value, score, rationale
    error: str | None = None  # why there are no (or not all) verdicts
    seconds: float = 0.0

    @property
    def means(self) -> dict[str, float]:
        """Mean score per scorer (``judge/<scorer>/mean``) and over all verdicts (``judge/mean_score``)."""
        scored = [v for v in self.verdicts if v["score"] is not None]
        if not scored:
            return {}
        means = {}
        for name in sorted({v["scorer"] for v in scored}):
            mine = [v["score"] for v in scored if v["scorer"] == name]
            means[f"{METRIC_PREFIX}{name}/mean"] = sum(mine) / len(mine)
        means[MEAN_METRIC] = sum(v["score"] for v in scored) / len(scored)
        return means

    def log(self, client, run_id: str) -> None:
        import time as clock

        import pandas as pd
        from mlflow.entities import Metric, RunTag

        now = int(clock.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in self.means.items()]
        status = "ok" if self.error is None else f"unavailable: {self.error}"
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("peft_studio.judge", status[:5000])])
        if self.verdicts:
            client.log_table(run_id, pd.DataFrame(self.verdicts), VERDICTS_TABLE)


def rubric_text(guidelines: str) -> str:
    """The rubric: the setting's text, the file an ``@path`` names, or the default."""
    text = guidelines.strip()
    if text.startswith("@"):
        from pathlib import Path

        # os.path.expanduser leaves an unknown ~user as written, where Path.expanduser raises RuntimeError
        text = Path(os.path.expanduser(text[1:])).read_text(encoding="utf-8").strip()
    return text or DEFAULT_RUBRIC


def mask_secrets(text: str) -> str:
    """``text`` with the value of every key variable replaced by ***."""
    for name in KEY_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _score(value) -> float | None:
    text = str(value).strip().lower()
    if text in ("yes", "true", "pass"):
        return 1.0
    if text in ("no", "false", "fail"):
        return 0.0
    return None


def judge_samples(model: str, samples: list[dict], guidelines: str = "", base_url: str = "",
                  timeout: float = 120.0) -> JudgeResult:
    """Verdicts on ``samples`` (rows with prompt, output and reference), or the reason there are none."""
    result = JudgeResult(model=model)
    if not samples:
        result.error = "there were no samples to judge"
        return result
    try:
        rubric = rubric_text(guidelines)
    except OSError as exc:
        result.error = f"the rubric file could not be read ({exc.strerror})"
        return result
    stop = threading.Event()
    verdicts: list[dict] = []
    failure: list[str] = []
    started = time.monotonic()
    saved = {name: os.environ.get(name) for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", CATALOG_VARIABLE)}
    if base_url.strip():
        os.environ["OPENAI_API_BASE"] = base_url.strip().rstrip("/")  # MLflow's OpenAI provider reads it
    if saved[CATALOG_VARIABLE] is None:  # no fetch from github.com per judge call: the bundled catalog serves
        os.environ[CATALOG_VARIABLE] = ""

    def work() -> None:
        try:
            from mlflow.genai.scorers import Correctness, Guidelines

            guideline_scorer = Guidelines(name="guidelines", guidelines=[rubric], model=model)
            correctness = Correctness(name="correctness", model=model)
            for row in samples:
                inputs = {"request": row["prompt"]}
                checks = [("guidelines", lambda r=row: guideline_scorer(inputs={"request": r["prompt"]},
                                                                        outputs=r["output"]))]
                if row.get("reference"):
                    checks.append(("correctness", lambda r=row, i=inputs: correctness(
                        inputs=i, outputs=r["output"], expectations={"expected_response": r["reference"]})))
                for name, check in checks:
                    if stop.is_set():
                        return
                    feedback = check()
                    if getattr(feedback, "error", None):
                        raise RuntimeError(f"{feedback.error}")
                    score = _score(feedback.value)
                    if score is None:
                        raise ValueError(f"the judge answered {str(feedback.value)[:80]!r}, not yes or no")
                    verdicts.append({"prompt": row["prompt"], "output": row["output"],
                                     "reference": row.get("reference", ""), "scorer": name,
                                     "value": str(feedback.value), "score": score,
                                     "rationale": mask_secrets(str(feedback.rationale or ""))})
        except Exception as exc:  # any failure of the judge is reported, never raised
            failure.append(_reason(exc))

    worker = threading.Thread(target=work, daemon=True, name="peft-studio-judge")
    worker.start()
    worker.join(timeout)
    result.seconds = time.monotonic() - started
    if worker.is_alive():
        stop.set()  # a call in flight still ends on its own (MLflow's timeout); no new call starts
        result.error = f"the judge gave no verdict within judge_timeout={timeout:g} s (down or too slow)"
    else:
        for name, value in saved.items():  # only once nothing can still read them
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if failure:
            result.error = failure[0]
    result.verdicts = list(verdicts)
    if result.error:
        log.warning("LLM judge %s: %s", model, result.error)
    return result


def _reason(exc: BaseException) -> str:
    """One line about a judge failure, with keys masked."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if "Failed to parse response" in first:
        first = "the judge's answer was not the JSON verdict asked for"
    reason = mask_secrets(f"{first} ({type(exc).__name__})")
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
