"""Task metrics at the end of a run, on the eval split: what the model does, beside how its loss went.

Classification: accuracy and macro-F1 (scikit-learn) of the final adapter's predictions, a confusion-matrix
PNG (``ConfusionMatrixDisplay``) and the predictions as a table. Causal LM: perplexity (exp of the eval loss
of the final adapter) and, where the samples have references, ROUGE-L (the ``rouge-score`` package, what
MLflow's own ``rougeL`` metric uses) of the last milestone's outputs against them.

Everything here computes; ``TaskMetrics.log`` writes to the run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

METRIC_PREFIX = "task/"
ARTIFACT_DIR = "evaluation"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_TABLE = f"{ARTIFACT_DIR}/predictions.json"


@dataclass
class TaskMetrics:
    metrics: dict[str, float] = field(default_factory=dict)  # task/accuracy, task/macro_f1, task/perplexity, ...
    confusion: list[list[int]] | None = None  # rows: true label, columns: predicted label
    labels: list[str] | None = None
    png: Path | None = None
    predictions: object = None  # a DataFrame (text, label, predicted) for classification
    note: str = ""  # why a metric is missing

    def log(self, client, run_id: str) -> None:
        import json
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        finite = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        if finite:
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finite.items()])
        if self.png is not None and self.png.exists():
            client.log_artifact(run_id, str(self.png), ARTIFACT_DIR)
        if self.confusion is not None:
            client.log_text(run_id, json.dumps({"labels": self.labels, "matrix": self.confusion}, indent=2),
                            f"{ARTIFACT_DIR}/confusion_matrix.json")
        if self.predictions is not None:
            client.log_table(run_id, self.predictions, PREDICTIONS_TABLE)


class EvalLogits:
    """The Trainer's ``compute_metrics`` for classification: ``eval_accuracy``, and the logits it came from, kept
    with the step of that evaluation.

    transformers evaluates at the last step of a run, so at the end these are the final weights' logits on the
    eval split: ``classification_metrics`` takes them instead of predicting the split a second time (the same
    forward passes over the same batches; a whole eval pass less at the end of every run). ``forget()`` when the
    weights change after an evaluation (stop_on puts the best-eval weights back)."""

    def __init__(self) -> None:
        self.trainer = None  # set once the Trainer exists: its state gives the step of each evaluation
        self.step: int | None = None
        self.logits = None

    def __call__(self, eval_prediction) -> dict[str, float]:
        import numpy as np

        self.logits = _logits(eval_prediction.predictions)
        self.step = self.trainer.state.global_step if self.trainer is not None else None
        return {"accuracy": float(np.mean(np.argmax(self.logits, axis=-1) == eval_prediction.label_ids))}

    def forget(self) -> None:
        self.step = self.logits = None

    def of_step(self, step: int, examples: int):
        """The logits of an evaluation at ``step`` covering ``examples`` examples, or None."""
        if self.step != step or self.logits is None or len(self.logits) != examples:
            return None
        return self.logits


def _logits(predictions):
    """A sequence classifier's logits from what the Trainer returns (a tuple when the model gives more outputs)."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def forget_eval_logits(trainer) -> None:
    """The model's weights changed since its last evaluation: its logits must not stand for them."""
    if isinstance(trainer.compute_metrics, EvalLogits):
        trainer.compute_metrics.forget()


def final_eval_logits(trainer, examples: int):
    """The logits of the trainer's last evaluation when it was of its current weights (see ``EvalLogits``)."""
    kept = trainer.compute_metrics
    return kept.of_step(trainer.state.global_step, examples) if isinstance(kept, EvalLogits) else None


def classification_metrics(trainer, texts: list[str], labels: list[int], label_names: list[str],
                           out_dir: str | Path) -> TaskMetrics:
    """Accuracy, macro-F1 and the confusion matrix of the trained model on the eval split (from the last
    evaluation's logits when it was of the final weights, else from a prediction pass)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, confusion_matrix, f1_score

    if trainer.eval_dataset is None or not labels:
        return TaskMetrics(note="no eval split (eval_fraction=0): no accuracy, macro-F1 or confusion matrix")
    logits = final_eval_logits(trainer, len(labels))
    if logits is None:
        logits = _logits(trainer.predict(trainer.eval_dataset, metric_key_prefix="task").predictions)
    predicted = np.argmax(logits, axis=-1)
    truth = np.asarray(labels)
    indices = list(range(len(label_names)))
    matrix = confusion_matrix(truth, predicted, labels=indices)
    result = TaskMetrics(
        metrics={f"{METRIC_PREFIX}accuracy": float(accuracy_score(truth, predicted)),
                 f"{METRIC_PREFIX}macro_f1": float(f1_score(truth, predicted, labels=indices, average="macro",
                                                            zero_division=0))},
        confusion=matrix.tolist(), labels=list(label_names),
        predictions=pd.DataFrame({"text": texts, "label": [label_names[i] for i in truth],
                                  "predicted": [label_names[i] for i in predicted]}),
    )
    png = Path(out_dir) / CONFUSION_PNG
    png.parent.mkdir(parents=True, exist_ok=True)
    size = min(3 + 0.6 * len(label_names), 12)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay(matrix, display_labels=label_names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(f"Eval split: accuracy {result.metrics['task/accuracy']:.3f}, "
                 f"macro-F1 {result.metrics['task/macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    result.png = png
    return result


def causal_lm_metrics(trainer, samples: list[dict]) -> TaskMetrics:
    """Perplexity of the final adapter on the eval split, and ROUGE-L of ``samples`` (rows with ``output`` and
    ``reference``) where they have references."""
    result = TaskMetrics()
    notes = []
    if trainer.eval_dataset is not None:
        loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Perplexity", prediction_loss_only=True,
                                       metric_key_prefix="task")
        loss = loop.metrics.get("task_loss")
        if loss is not None and math.isfinite(loss):
            result.metrics[f"{METRIC_PREFIX}eval_loss"] = float(loss)
            result.metrics[f"{METRIC_PREFIX}perplexity"] = float(math.exp(min(loss, 700.0)))
    else:
        notes.append("no eval split (eval_fraction=0): no perplexity")
    pairs = [(r["reference"], r["output"]) for r in samples if r.get("reference")]
    if pairs:
        result.metrics[f"{METRIC_PREFIX}rougeL"] = rouge_l(pairs)
    elif samples:
        notes.append("the samples have no references: no ROUGE-L")
    result.note = "; ".join(notes)
    return result


def rouge_l(pairs: list[tuple[str, str]]) -> float:
    """Mean ROUGE-L F-measure of (reference, output) pairs (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(reference, output)["rougeL"].fmeasure for reference, output in pairs]
    return float(sum(scores) / len(scores))
