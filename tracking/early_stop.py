"""``stop_on``: end training at the next step boundary when the live rules say the run has gone bad.

``StopOnCallback`` feeds every Trainer log entry to ``scoring.stopping.StopRules`` (pure) and, on its
decision, sets ``control.should_training_stop``: the Trainer's own control flow ends the loop after the
current step, and the job then concludes as usual (adapter, analysis, completion message, FINISHED).

For the adapter it keeps the weights of the best evaluation so far in memory: only the trainable
parameters (the LoRA matrices and the classifier head, a few hundred KB to a few MB), copied to the CPU
at an evaluation that improves on the best. No checkpoint is written for it, so it costs no disk and none of
``load_best_model_at_end``'s save/eval alignment. After a stop, ``restore_best`` puts those weights back
into the model before the adapter is saved. The callback runs on every process (the decision reads the
same gathered losses on each, so all of them stop at the same step); the weights are kept on the main one.
"""

from __future__ import annotations

import logging
import math
import numbers

from transformers import TrainerCallback

from scoring.stopping import DEFAULT_PATIENCE, StopDecision, StopRules, parse_stop_on

log = logging.getLogger(__name__)

STOPPED_TAG = "peft_studio.stopped_early"  # "overfitting: eval loss rose for 3 evaluations since step 40"
ADAPTER_STEP_TAG = "peft_studio.adapter_step"  # the step whose weights are the logged adapter


class StopOnCallback(TrainerCallback):
    """Stop when one of ``stop_on`` (``"nan,divergence,overfitting"``) is met; keep the best-eval weights.

    For your own ``Trainer`` too: ``callbacks=[StopOnCallback("overfitting")]``, then after ``train()``
    call ``restore_best(trainer.model)`` before saving when ``decision`` is set."""

    def __init__(self, stop_on: str, patience: int = DEFAULT_PATIENCE, keep_best: bool = True):
        self.stop_on = parse_stop_on(stop_on)
        self.patience = patience
        self.keep_best = keep_best
        self.rules = StopRules(self.stop_on, patience)
        self.decision: StopDecision | None = None
        self.stopped_step: int | None = None
        self.best_step: int | None = None
        self.best_eval = math.inf
        self._best_state: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.decision is None:  # the warm-up share of the run is known now
            self.rules = StopRules(self.stop_on, self.patience, total_steps=max(state.max_steps, 1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.decision is not None:
            return
        values = {key: _number(logs.get(key)) for key in ("loss", "grad_norm", "eval_loss")}
        decision = self.rules.observe(state.global_step, values)
        if decision is not None:
            self.decision, self.stopped_step = decision, state.global_step
            control.should_training_stop = True
            log.warning("stop_on=%s: stopping at step %d: %s", decision.condition, state.global_step,
                        decision.reason)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        eval_loss = _number((metrics or {}).get("eval_loss"))
        if eval_loss is None or not math.isfinite(eval_loss) or eval_loss >= self.best_eval:
            return
        self.best_eval, self.best_step = eval_loss, state.global_step
        if self.keep_best and model is not None and state.is_world_process_zero:
            self._best_state = {name: p.detach().to("cpu", copy=True)
                                for name, p in model.named_parameters() if p.requires_grad}

    def restore_best(self, model) -> int | None:
        """After a stop, load the best-eval weights into ``model``; returns their step (None: no evaluation
        came before the stop, the model keeps its last weights)."""
        if self.decision is None or self._best_state is None:
            return None
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self._best_state:
                    parameter.copy_(self._best_state[name].to(parameter.device))
        return self.best_step


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)
