"""stop_on: the pure decision (hypothesis properties) and real jobs that stop early, or run to their end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.stopping import STOP_CONDITIONS, StopRules, parse_stop_on

# --- the decision, pure ---------------------------------------------------------------------------------------


def test_parse_stop_on_accepts_lists_and_refuses_unknown_words_naming_the_fix():
    assert parse_stop_on("nan, Overfitting nan") == ("nan", "overfitting")
    assert parse_stop_on("") == () and parse_stop_on("none") == ()
    with pytest.raises(ValueError, match=r"unknown condition 'nans'.*nan, divergence, overfitting"):
        parse_stop_on("nans")


@given(losses=st.lists(st.floats(min_value=0.01, max_value=10), max_size=30),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]), key=st.sampled_from(["loss", "eval_loss"]))
def test_nan_stops_at_once_at_the_step_of_the_first_non_finite_loss(losses, bad, key):
    rules = StopRules("nan")
    for step, loss in enumerate(losses, start=1):
        assert rules.observe(step, {"loss": loss}) is None
    decision = rules.observe(len(losses) + 1, {key: bad})
    assert decision is not None and decision.condition == "nan" and decision.step == len(losses) + 1
    assert rules.observe(len(losses) + 2, {key: bad}) is None  # decided once


@settings(max_examples=60)
@given(level=st.floats(min_value=0.05, max_value=50), wiggle=st.lists(st.floats(min_value=-1, max_value=1),
                                                                        min_size=3, max_size=40),
       patience=st.integers(min_value=1, max_value=4))
def test_overfitting_never_fires_within_the_noise(level, wiggle, patience):
    """Eval losses that only wobble by under 1% of their level (the rule needs a 2% rise beyond the noise)."""
    rules = StopRules("overfitting,divergence", patience=patience)
    for i, w in enumerate(wiggle):
        assert rules.observe(10 * (i + 1), {"eval_loss": level * (1 + 0.009 * w), "loss": level}) is None


@settings(max_examples=60)
@given(falls=st.integers(min_value=3, max_value=8), patience=st.integers(min_value=1, max_value=4),
       start=st.floats(min_value=0.1, max_value=10))
def test_overfitting_fires_after_patience_evaluations_above_the_best_and_names_its_step(falls, patience, start):
    rules = StopRules("overfitting", patience=patience)
    evals = [start * (1 - 0.05 * i) for i in range(falls)] + [start * 5] * (patience + 2)
    fired = []
    for i, value in enumerate(evals):
        decision = rules.observe(10 * (i + 1), {"eval_loss": value})
        if decision is not None:
            fired.append((i, decision))
    [(index, decision)] = fired
    assert index == falls + patience - 1  # the patience-th evaluation above the best
    best_step = 10 * falls
    assert decision.best_step == best_step
    assert decision.sentence(99, best_step) == (f"stopped early at step 99: eval loss rose for {patience} "
                                                f"evaluations since step {best_step}; the adapter is the one from "
                                                f"step {best_step}")


@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()), max_size=60))
def test_nothing_fires_without_stop_on_and_nothing_raises_on_any_values(values):
    quiet, all_on = StopRules(""), StopRules(",".join(STOP_CONDITIONS), patience=1)
    for step, value in enumerate(values):
        entry = {"loss": value, "eval_loss": value if step % 3 == 0 else None, "grad_norm": value}
        assert quiet.observe(step, entry) is None
        all_on.observe(step, entry)


def test_divergence_fires_on_a_loss_that_climbs_back_and_stays_up():
    rules = StopRules("divergence")
    losses = [2.0 - 0.05 * i for i in range(30)] + [0.5 + 0.1 * i for i in range(30)]
    decisions = [d for i, loss in enumerate(losses) if (d := rules.observe(i + 1, {"loss": loss})) is not None]
    assert len(decisions) == 1 and decisions[0].condition == "divergence"
    assert "the training loss diverged from step" in decisions[0].reason


# --- real jobs -------------------------------------------------------------------------------------------------


def _flipped_labels_csv(path, n: int = 40, eval_fraction: float = 0.2, seed: int = 42):
    """A tiny set that overfits at once: the eval rows (which rows the job's seeded split holds out is known)
    repeat training texts with the other label, so every bit the model memorizes raises the eval loss."""
    order = pd.DataFrame({"i": range(n)}).sample(frac=1.0, random_state=seed).reset_index(drop=True)["i"].tolist()
    held_out = sorted(order[: int(round(n * eval_fraction))])
    train = [i for i in range(n) if i not in held_out]
    things = "printer login refund invoice password shipping screen battery account email crash update".split()
    rows: list = [None] * n
    for k, i in enumerate(train):
        good = k % 2 == 0
        rows[i] = (f"{'great' if good else 'awful'} {things[k % len(things)]} {k}", "pos" if good else "neg")
    for k, i in enumerate(held_out):
        text, label = rows[train[k]]
        rows[i] = (text, "neg" if label == "pos" else "pos")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def _job(tmp_path, stop_on: str):
    from tracking.config import TrainConfig

    return TrainConfig(data=str(_flipped_labels_csv(tmp_path / "flip.csv")), eval_fraction=0.2, max_steps=12,
                       batch_size=8, learning_rate=0.01, max_length=16, eval_steps=2, logging_steps=2,
                       warmup_ratio=0.0, lora_dropout=0.0, stop_on=stop_on, stop_patience=2,
                       output_dir=str(tmp_path / "out"), heartbeat_seconds=0, stall_minutes=0)


def _eval_losses(client, run_id) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "eval_loss")}


def _adapter_eval_outputs(adapter_dir, data_csv) -> tuple[float, list[str]]:
    """The eval loss and the predicted labels of the saved adapter on the held-out rows, computed apart from the
    job."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tracking.config import TrainConfig
    from tracking.data import load_text_data
    from tracking.model import builtin_model_path

    data = load_text_data(TrainConfig(data=str(data_csv), eval_fraction=0.2))
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    base = AutoModelForSequenceClassification.from_pretrained(builtin_model_path(), num_labels=2)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    batch = tokenizer(data.eval_texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch, labels=torch.tensor(data.eval_labels))
    return float(output.loss), [data.label_names[i] for i in output.logits.argmax(-1).tolist()]


@pytest.mark.slow
def test_stop_on_overfitting_stops_early_and_keeps_the_best_eval_adapter(tracking_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tracking.train import run_training

    passes = _count_prediction_passes(monkeypatch)
    result = run_training(_job(tmp_path, "overfitting"))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    evals = _eval_losses(client, result.run_id)
    best_step = min(evals, key=evals.get)
    assert run.info.status == "FINISHED"
    assert result.total_steps < 12, f"ran all {result.total_steps} planned steps"
    assert run.data.tags["peft_studio.stopped_early"].startswith("overfitting: eval loss rose for 2 evaluations")
    assert run.data.tags["peft_studio.adapter_step"] == str(best_step)
    assert "quality_score" in run.data.metrics  # analyzed, on what was trained
    assert [a.path for a in client.list_artifacts(result.run_id, "adapter")]
    saved, predicted = _adapter_eval_outputs(tmp_path / "out" / "adapter", tmp_path / "flip.csv")
    assert saved == pytest.approx(evals[best_step], abs=2e-3), (saved, evals)
    assert saved < evals[max(evals)] - 0.05  # not the last (overfitted) weights
    # the task metrics are the saved adapter's too, not the last evaluation's (of the overfitted weights)
    table = json.loads(Path(client.download_artifacts(result.run_id, "evaluation/predictions.json")).read_text())
    assert [row[table["columns"].index("predicted")] for row in table["data"]] == predicted
    assert passes == ["task"]  # predicted again with the restored weights (the last evaluation's were others)
    events = (tmp_path / "events.jsonl")
    client.download_artifacts(result.run_id, "notifications/events.jsonl", str(tmp_path))
    completion = [line for line in events.read_text().splitlines() if '"completion"' in line]
    assert (f"Stopped early at step {result.total_steps}: eval loss rose for 2 evaluations since step {best_step}; "
            f"the adapter is the one from step {best_step}.") in completion[0]


@pytest.mark.slow
def test_the_same_job_without_stop_on_runs_to_its_planned_end(tracking_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tracking.train import run_training

    passes = _count_prediction_passes(monkeypatch)
    result = run_training(_job(tmp_path, ""))
    run = MlflowClient().get_run(result.run_id)
    assert result.total_steps == 12 and run.info.status == "FINISHED"
    assert "peft_studio.stopped_early" not in run.data.tags
    assert passes == []  # the task metrics are the evaluation at step 12's: the eval split is not predicted again
    assert run.data.metrics["task/accuracy"] == run.data.metrics["eval_accuracy"]


def _count_prediction_passes(monkeypatch) -> list[str]:
    """The ``metric_key_prefix`` of each ``Trainer.predict`` call from now on (the real one still runs)."""
    from transformers import Trainer

    calls: list[str] = []
    real = Trainer.predict

    def predict(self, *args, **kwargs):
        calls.append(kwargs.get("metric_key_prefix", "test"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "predict", predict)
    return calls


@pytest.mark.slow
def test_stop_on_is_a_callback_argument_for_a_stock_trainer(tracking_uri, tmp_path, stock_classifier):
    """``PeftStudioCallback(stop_on="nan")`` in a user's own Trainer: a NaN loss (put into the log entry by a
    callback ahead of ours) stops the Trainer at that step, and the completion message says why."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from receivers import HTTPReceiver
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tracking.callbacks import PeftStudioCallback

    class NanAtStep3(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 3 and "loss" in logs:
                logs["loss"] = float("nan")

    model, dataset = stock_classifier
    mlflow.set_experiment("own-trainer")
    with HTTPReceiver() as webhook:
        callback = PeftStudioCallback(notify=webhook.url(), stop_on="nan", stall_minutes=0)
        args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=20, logging_steps=1,
                                 per_device_train_batch_size=8, report_to=["mlflow"], save_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[NanAtStep3(), callback])
        trainer.train()
        posts = [p["json"] for p in webhook.wait_for(3, timeout=15)]
    assert trainer.state.global_step == 3
    tags = MlflowClient().get_run(callback.run_id).data.tags
    assert tags["peft_studio.stopped_early"].startswith("nan: loss is NaN at step 3 (gradient norm ")
    completion = [p for p in posts if p.get("title") == "Training Complete! 🎉"]
    assert "Stopped early at step 3: loss is NaN at step 3 (gradient norm " in completion[0]["message"]
    assert ("; the adapter is the one from the last step (no evaluation came before the stop)."
            in completion[0]["message"])
