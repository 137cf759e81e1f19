"""The end of a classification run takes its accuracy, macro-F1, confusion matrix and predictions table from the
logits of the run's last evaluation (transformers evaluates at the last step) instead of predicting the eval split
a second time, and predicts again when the weights changed after that evaluation (stop_on put the best ones back;
tests/test_guard_stop.py checks that case end to end).

A real Trainer from the job's ``build_trainer``, on the built-in model and data, trained for two steps.
"""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from tracking.task_metrics import EvalLogits, classification_metrics, forget_eval_logits


class PredictionSteps(TrainerCallback):
    """Counts the batches every evaluation or prediction pass runs."""

    def __init__(self) -> None:
        self.count = 0

    def on_prediction_step(self, args, state, control, **kwargs):
        self.count += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tracking.config import TrainConfig
    from tracking.data import load_text_data
    from tracking.model import load_lora_model
    from tracking.train import build_trainer

    out = tmp_path_factory.mktemp("task-metrics")
    config = TrainConfig(max_steps=2, eval_steps=2, eval_fraction=0.05, max_length=32, batch_size=8,
                         logging_steps=1, output_dir=str(out))
    data = load_text_data(config)
    steps = PredictionSteps()
    trainer = build_trainer(config, data, load_lora_model(config, data.label_names), callbacks=[steps])
    trainer.train()
    return trainer, data, steps, out


@pytest.mark.slow  # trains a model
def test_the_last_evaluations_logits_are_the_final_metrics_without_a_second_pass(trained):
    trainer, data, steps, out = trained
    evaluated = steps.count  # the evaluation at step 2, the last step
    assert evaluated > 0 and trainer.compute_metrics.step == trainer.state.global_step == 2

    reused = classification_metrics(trainer, data.eval_texts, data.eval_labels, data.label_names, out)
    assert steps.count == evaluated, "the eval split was predicted a second time"

    forget_eval_logits(trainer)  # what the job does after stop_on restores the best-eval weights
    predicted = classification_metrics(trainer, data.eval_texts, data.eval_labels, data.label_names, out)
    assert steps.count == 2 * evaluated  # a prediction pass now
    assert reused.metrics == predicted.metrics and reused.confusion == predicted.confusion
    assert reused.predictions.equals(predicted.predictions)


def test_logits_stand_only_for_the_step_and_the_split_they_were_computed_on():
    kept = EvalLogits()
    assert kept.of_step(0, 0) is None  # no evaluation yet
    kept.step, kept.logits = 4, [[0.1, 0.9], [0.8, 0.2]]
    assert kept.of_step(4, 2) == [[0.1, 0.9], [0.8, 0.2]]
    assert kept.of_step(5, 2) is None  # trained on since (e.g. a divergence stop between evaluations)
    assert kept.of_step(4, 3) is None  # another split
    kept.forget()
    assert kept.of_step(4, 2) is None
