"""What the model does (issue 17): samples at milestones, task metrics, the optional LLM judge.

Two real trainings, shared by the tests that read them: the tiny causal LM (samples at every milestone, judged
by a fake OpenAI-compatible server on 127.0.0.1 that answers the real chat-completions format) and the
default classification job. Contents are checked against what the saved adapter really outputs.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import new_sqlite_store
from receivers import HOST

JUDGE_KEY = "sk-" + "judge-test-0123456789abcdef"  # made up; must never reach the run


class FakeJudge:
    """An OpenAI-compatible chat-completions server: ``mode`` ok (a JSON verdict), 500, hang, garbage."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.requests: list[dict] = []
        self._closing = threading.Event()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                judge.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                if judge.mode == "hang":
                    judge._closing.wait(60)
                    return
                if judge.mode == "500":
                    self._answer(500, {"error": {"message": "the model is overloaded"}})
                    return
                prompt = body["messages"][-1]["content"]
                content = ("I think it is fine" if judge.mode == "garbage" else
                           json.dumps({"rationale": f"read {len(prompt)} characters", "result": "yes"}))
                self._answer(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                                   "model": body.get("model"), "choices": [{
                                       "index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": content}}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

            def _answer(self, status, payload):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def judge_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", JUDGE_KEY)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                     "MLFLOW_EXPERIMENT_NAME", "PEFT_STUDIO_NOTIFY"):
            mp.delenv(name, raising=False)
        yield mp


def _train(tmp: Path, mp, **settings):
    import logging

    import mlflow

    from tracking.config import TrainConfig
    from tracking.train import run_training

    uri = new_sqlite_store(tmp / "mlflow.db")
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        result = run_training(TrainConfig(output_dir=str(tmp / "out"), **settings))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
        while mlflow.active_run():
            mlflow.end_run()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri), result, records


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, tiny_causal_lm, judge_env):
    tmp = tmp_path_factory.mktemp("causal-eval")
    judge = FakeJudge("ok")
    try:
        client, result, records = _train(tmp, judge_env, model=str(tiny_causal_lm), task="causal-lm", max_steps=4,
                                         batch_size=8, max_length=32, logging_steps=1, eval_steps=4, samples=3,
                                         eval_fraction=0.03,
                                         sample_tokens=8, judge="openai:/judge-model", judge_url=judge.url,
                                         judge_timeout=60)
    finally:
        judge.close()
    return {"client": client, "run_id": result.run_id, "tmp": tmp, "judge": judge, "logs": records,
            "model": tiny_causal_lm}


def _table(client, run_id, path):
    import pandas as pd

    local = client.download_artifacts(run_id, path)
    data = json.loads(Path(local).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


def _report(client, run_id) -> str:
    return Path(client.download_artifacts(run_id, "quality/report.md")).read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("causal-run")  # one training shared, on one worker
def test_samples_table_has_one_row_per_prompt_per_milestone_as_the_adapter_generates(causal_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracking.samples import generate_outputs

    client, run_id = causal_run["client"], causal_run["run_id"]
    table = _table(client, run_id, "samples/samples.json")
    assert sorted(table["milestone"].unique()) == [25, 50, 75, 100]
    assert sorted(table["step"].unique()) == [1, 2, 3, 4]
    assert len(table) == 3 * 4 and table.groupby("step")["prompt"].nunique().eq(3).all()
    # the 100% outputs are what the saved adapter generates from the same prompts
    base = AutoModelForCausalLM.from_pretrained(causal_run["model"])
    model = PeftModel.from_pretrained(base, str(causal_run["tmp"] / "out" / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(causal_run["model"])
    final = table[table["step"] == 4]
    again = generate_outputs(model, tokenizer, list(final["prompt"]), 8, float("inf"), 32)
    assert again == list(final["output"])
    assert all(reference for reference in table["reference"])  # eval-split prompts carry their continuation


@pytest.mark.slow
@pytest.mark.xdist_group("causal-run")  # one training shared, on one worker
def test_causal_lm_task_metrics_and_completion_message(causal_run):
    from tracking.task_metrics import rouge_l

    client, run_id = causal_run["client"], causal_run["run_id"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["task/perplexity"] == pytest.approx(math.exp(metrics["task/eval_loss"]), rel=1e-6)
    final = _table(client, run_id, "samples/samples.json").query("step == 4")
    assert metrics["task/rougeL"] == pytest.approx(rouge_l(list(zip(final["reference"], final["output"]))))
    events = [json.loads(line) for line in
              Path(client.download_artifacts(run_id, "notifications/events.jsonl")).read_text().splitlines()]
    done = [e["event"] for e in events if e["event"]["event_type"] == "completion"][0]["message"]
    table = _table(client, run_id, "samples/samples.json")
    first = table[table["prompt"] == table["prompt"].iloc[0]]
    assert "Sample: “" in done and "• step 1:" in done and "• step 4:" in done
    assert first["output"].iloc[0][:40] in done and first["output"].iloc[-1][:40] in done
    assert "LLM judge: mean score 1.00" in done
    assert "## Model outputs" in _report(client, run_id)


@pytest.mark.slow
@pytest.mark.xdist_group("causal-run")  # one training shared, on one worker
def test_judge_verdicts_mean_and_report_from_a_real_chat_completions_exchange(causal_run):
    client, run_id = causal_run["client"], causal_run["run_id"]
    final = _table(client, run_id, "samples/samples.json").query("step == 4")
    verdicts = _table(client, run_id, "evaluation/judge_verdicts.json")
    assert sorted(verdicts["scorer"].unique()) == ["correctness", "guidelines"]
    assert len(verdicts) == 2 * len(final)
    assert set(verdicts["output"]) == set(final["output"]) and set(verdicts["prompt"]) == set(final["prompt"])
    requests = causal_run["judge"].requests
    assert len(requests) == len(verdicts)
    assert all(r["path"] == "/v1/chat/completions" and r["json"]["model"] == "judge-model" for r in requests)
    assert all({k.lower(): v for k, v in r["headers"].items()}["authorization"] == f"Bearer {JUDGE_KEY}"
               for r in requests)
    sent = [r["json"]["messages"][-1]["content"] for r in requests]
    for output in final["output"]:  # every real output went to the judge, and its rationale came back
        assert any(output in text for text in sent)
    assert set(verdicts["rationale"]) <= {f"read {len(text)} characters" for text in sent}
    run = client.get_run(run_id)
    assert run.data.metrics["judge/mean_score"] == pytest.approx(verdicts["score"].mean())
    assert run.data.tags["peft_studio.judge"] == "ok"
    report = _report(client, run_id)
    assert "### LLM judge (openai:/judge-model)" in report and "Mean judge score: 1.00" in report


@pytest.mark.slow
@pytest.mark.xdist_group("causal-run")  # one training shared, on one worker
def test_the_judge_key_never_reaches_params_tags_artifacts_or_logs(causal_run):
    client, run_id = causal_run["client"], causal_run["run_id"]
    run = client.get_run(run_id)
    assert JUDGE_KEY not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    root = Path(client.download_artifacts(run_id, ""))
    for path in root.rglob("*"):
        if path.is_file():
            assert JUDGE_KEY.encode() not in path.read_bytes(), path
    assert not [line for line in causal_run["logs"] if JUDGE_KEY in line]


@pytest.mark.slow
@pytest.mark.xdist_group("causal-run")
@pytest.mark.parametrize("mode, reason", [("500", "no verdict within"), ("hang", "no verdict within"),
                                          ("garbage", "not the JSON verdict")])
def test_a_failing_judge_leaves_the_analysis_standing_and_says_why(causal_run, mode, reason):
    from tracking.evaluation import Evaluation
    from tracking.judge import judge_samples

    final = _table(causal_run["client"], causal_run["run_id"], "samples/samples.json").query("step == 4")
    rows = final.to_dict("records")
    judge = FakeJudge(mode)
    try:
        result = judge_samples("openai:/judge-model", rows, base_url=judge.url, timeout=3)
    finally:
        judge.close()
    assert judge.requests, "the judge was never asked"
    assert not result.verdicts and reason in result.error and result.seconds < 10
    section = Evaluation(sample_rows=rows, final_rows=rows, judge=result).report_section()
    assert "The judge could not be used" in section and reason in section
    assert JUDGE_KEY not in result.error


@pytest.mark.slow
def test_a_run_whose_judge_answers_garbage_finishes_and_its_report_says_why(tmp_path, tiny_causal_lm, judge_env):
    judge = FakeJudge("garbage")
    try:
        client, result, _ = _train(tmp_path, judge_env, model=str(tiny_causal_lm), task="causal-lm", max_steps=2,
                                   batch_size=8, max_length=32, logging_steps=1, samples=2, sample_tokens=4,
                                   eval_fraction=0.02,
                                   judge="openai:/judge-model", judge_url=judge.url, judge_timeout=20)
    finally:
        judge.close()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "quality_score" in run.data.metrics
    assert "judge/mean_score" not in run.data.metrics
    assert run.data.tags["peft_studio.judge"].startswith("unavailable: the judge's answer was not the JSON verdict")
    assert "The judge could not be used: the judge's answer was not the JSON verdict" in _report(client, result.run_id)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, judge_env):
    tmp = tmp_path_factory.mktemp("classification-eval")
    client, result, _ = _train(tmp, judge_env, max_steps=6, max_length=32, eval_steps=6, eval_fraction=0.05)
    return client, result.run_id, tmp


@pytest.mark.slow
def test_classification_logs_accuracy_macro_f1_and_a_confusion_matrix_of_its_predictions(classification_run):
    import numpy as np
    from peft import PeftModel
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tracking.model import builtin_model_path

    client, run_id, tmp = classification_run
    run = client.get_run(run_id)
    predictions = _table(client, run_id, "evaluation/predictions.json")
    assert len(predictions) == int(run.data.params["eval_examples"])
    accuracy = accuracy_score(predictions["label"], predictions["predicted"])
    assert run.data.metrics["task/accuracy"] == pytest.approx(accuracy)
    assert run.data.metrics["task/macro_f1"] == pytest.approx(
        f1_score(predictions["label"], predictions["predicted"], average="macro", zero_division=0))
    confusion = json.loads(Path(client.download_artifacts(run_id, "evaluation/confusion_matrix.json")).read_text())
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == len(predictions) and np.trace(matrix) / matrix.sum() == pytest.approx(accuracy)
    for i, true in enumerate(confusion["labels"]):
        for j, predicted in enumerate(confusion["labels"]):
            assert matrix[i, j] == ((predictions["label"] == true) & (predictions["predicted"] == predicted)).sum()
    png = Path(client.download_artifacts(run_id, "evaluation/confusion_matrix.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the predictions are what the saved adapter predicts
    labels = confusion["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        builtin_model_path(), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    model = PeftModel.from_pretrained(base, str(tmp / "out" / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    head = predictions.head(16)
    import torch

    with torch.no_grad():
        logits = model(**tokenizer(list(head["text"]), truncation=True, max_length=32, padding=True,
                                   return_tensors="pt")).logits
    assert [labels[i] for i in logits.argmax(-1).tolist()] == list(head["predicted"])
    report = _report(client, run_id)
    assert "task/accuracy" in report and "evaluation/confusion_matrix.png" in report
    assert "samples/samples.json" not in report and "judge" not in report.lower().split("## model outputs")[1]
    assert not [k for k in client.list_artifacts(run_id) if k.path == "samples"]  # no sampling for classification
