"""What to change next, derived from the factors and the history's findings.

The advice follows Google's Deep Learning Tuning Playbook and Prechelt's early-stopping rules (see
``docs/scoring.md``); each suggestion names a concrete new value when the run's parameters are known.
Order: priority (high first), then the order the rules run in below (the most fundamental problem first),
so the first suggestion always answers the analysis's top concern. Advice never contradicts it: an
overfitting or dead run is never told to train longer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from .models import Category, FactorScore, ImprovementSuggestion, Priority, TrainingResult, format_value
from .params import Hyperparameters, is_valid
from .rules import Findings, chance_loss
from .thresholds import Thresholds
from .wording import moved

DEFAULT_LORA_DROPOUT_STEP = 0.05
DEFAULT_LORA_DROPOUT = 0.1  # suggested where none is set (or the one set is not a valid dropout)
MAX_SUGGESTED_LORA_DROPOUT = 0.5  # more dropout than this is no remedy: regularize with weight decay instead
DEFAULT_WEIGHT_DECAY = 0.01
MAX_SUGGESTED_WEIGHT_DECAY = 0.1
MAX_RAISED_LEARNING_RATE = 1.0  # a learning rate already this high is never told to go higher
DEFAULT_WARMUP_RATIO = 0.1


def suggest(
    result: TrainingResult,
    factors: Mapping[str, FactorScore],
    findings: Findings | None,
    thresholds: Thresholds,
    hp: Hyperparameters,
    concern: str = "none",
) -> list[ImprovementSuggestion]:
    out: list[ImprovementSuggestion] = []
    if concern == "not_learned" and findings is not None:
        out += _not_learned(findings, hp)
    out += _stability(result, findings, thresholds, hp)
    out += _overfitting(result, factors, findings, hp)
    if concern not in ("not_learned", "unstable", "overfitting"):
        out += _convergence(result, findings, hp)
    if concern not in ("not_learned", "unstable"):
        out += _underfitting(result, factors, thresholds, hp)
        out += _efficiency(result, factors, findings, thresholds, hp)
    out += _unmeasured(factors)
    return sorted((_within_range(s) for s in out), key=lambda s: s.priority.rank)


def _within_range(s: ImprovementSuggestion) -> ImprovementSuggestion:
    """Keep a concrete change only if its value is one the parameter accepts, also as shown (0.99995 shows as
    1), and differs from the current one; otherwise the advice stands without a value."""
    if s.parameter is None or s.suggested_value is None:
        return s
    shown = format_value(s.suggested_value)
    if (is_valid(s.parameter, s.suggested_value) and is_valid(s.parameter, shown)
            and (s.current_value is None or shown != format_value(s.current_value))):
        return s
    return dataclasses.replace(s, parameter=None, current_value=None, suggested_value=None)


def _not_learned(f: Findings, hp: Hyperparameters) -> list[ImprovementSuggestion]:
    lf = f.learning
    why = lf.reason[0].upper() + lf.reason[1:]
    if lf.kind == "collapsed":
        return [ImprovementSuggestion(
            Category.UNDERFITTING, Priority.HIGH,
            f"The model did not learn: {lf.reason}. A collapse like this usually means a learning rate several "
            "times too high: lower it (and keep warm-up).", **_lr_change(hp, 0.1))]
    if lf.kind == "broken_end":
        return [ImprovementSuggestion(
            Category.STABILITY, Priority.HIGH,
            f"{why}. Train in bf16 (or fp32) instead of fp16 and lower the learning rate.", **_lr_change(hp, 0.5))]
    if lf.kind == "constant":
        return [ImprovementSuggestion(
            Category.UNDERFITTING, Priority.HIGH,
            f"The model did not learn: {lf.reason}. A constant loss usually means the labels never reach the "
            "loss (all masked, e.g. -100) or the trainable parameters are frozen.")]
    change = _lr_change(hp, 2.0) if lf.kind == "no_drop" else {}
    return [ImprovementSuggestion(
        Category.UNDERFITTING, Priority.HIGH,
        f"The model did not learn: {lf.reason}. Check that the labels are right and reach the model "
        "(num_labels, the label column), then raise the learning rate or the capacity (LoRA rank, target "
        "modules); if the loss rose early on, lower the learning rate instead.", **change)]


def _lr_change(hp: Hyperparameters, factor: float) -> dict:
    """The learning rate times ``factor``, when the run's is known and valid and the new one is too (never a
    raise of a rate already at ``MAX_RAISED_LEARNING_RATE``)."""
    lr = hp.number("learning_rate")
    if lr is None or lr <= 0 or (factor > 1 and lr >= MAX_RAISED_LEARNING_RATE):
        return {}
    suggested = _round_sig(lr * factor)
    if not (math.isfinite(suggested) and suggested > 0):
        return {}
    return {"parameter": hp.name_of("learning_rate"), "current_value": lr, "suggested_value": suggested}


def _round_sig(x: float, digits: int = 2) -> float:
    if x == 0:
        return 0.0
    if not math.isfinite(x) or abs(x) >= 1e308:  # inf has no significant digits; rounding near float max overflows
        return x
    return round(x, -int(math.floor(math.log10(abs(x)))) + digits - 1)


def _clip_at(p90: float | None) -> float | None:
    """A clipping threshold at the 90th percentile of the gradient norm, when that is a valid one."""
    if p90 is None or not math.isfinite(p90) or p90 <= 0:
        return None
    value = _round_sig(p90)
    return value if value > 0 else None


def _stability(r: TrainingResult, f: Findings | None, t: Thresholds, hp: Hyperparameters):
    if r.gradient_norm_stable is not False:
        if (f and f.stability.spike_count and _clip_at(f.stability.grad_norm_p90)
                and _clipping_would_bite(hp.number("max_grad_norm"), f.stability.grad_norm_p90)):
            s = f.stability
            return [ImprovementSuggestion(
                Category.STABILITY, Priority.LOW,
                f"{s.spike_count} isolated spike(s) (below the limit of {t.spike_limit}); if they grow, clip "
                f"gradients at about the 90th percentile of the gradient norm ({s.grad_norm_p90:.3g}).",
                hp.name_of("max_grad_norm"), hp.number("max_grad_norm"), _clip_at(s.grad_norm_p90),
            )]
        return []
    s = f.stability if f else None
    where = ""
    if s and s.nonfinite_loss_steps + s.nonfinite_grad_steps:
        where = f" NaN/inf appeared at step {min(s.nonfinite_loss_steps + s.nonfinite_grad_steps)}."
    elif s and s.divergence_step is not None:
        where = f" The loss diverged from step {s.divergence_step}."
    elif s and s.first_problem_step is not None:
        where = f" The first spike was at step {s.first_problem_step}."
    out = []
    early = (s is not None and s.first_problem_step is not None and r.total_steps
             and s.first_problem_step <= t.warmup_fraction * r.total_steps)
    warmup = hp.number("warmup_ratio")
    if early and not warmup and not hp.number("warmup_steps"):
        out.append(ImprovementSuggestion(
            Category.STABILITY, Priority.HIGH,
            f"Training was unstable early.{where} Add learning-rate warm-up, the first remedy for early "
            "instability.", hp.name_of("warmup_ratio"), warmup, DEFAULT_WARMUP_RATIO,
        ))
    elif s and s.clipped_fraction is not None and s.clipped_fraction > t.extreme_clipping_fraction:
        out.append(ImprovementSuggestion(
            Category.STABILITY, Priority.HIGH,
            f"Training was unstable.{where} {s.clipped_fraction:.0%} of updates were already clipped, so "
            "clipping is extreme: lower the learning rate instead.", **_lr_change(hp, 0.5),
        ))
    elif s and _clip_at(s.grad_norm_p90) and _clipping_would_bite(hp.number("max_grad_norm"), s.grad_norm_p90):
        out.append(ImprovementSuggestion(
            Category.STABILITY, Priority.HIGH,
            f"Training was unstable.{where} Clip gradients at about the 90th percentile of the gradient norm "
            f"({s.grad_norm_p90:.3g}).", hp.name_of("max_grad_norm"), hp.number("max_grad_norm"),
            _clip_at(s.grad_norm_p90),
        ))
    else:
        out.append(ImprovementSuggestion(
            Category.STABILITY, Priority.HIGH,
            f"Training was unstable.{where} Lower the learning rate (and add warm-up or gradient clipping).",
            **_lr_change(hp, 0.5),
        ))
    if out[0].parameter != hp.name_of("learning_rate") and hp.number("learning_rate"):
        out.append(ImprovementSuggestion(
            Category.STABILITY, Priority.MEDIUM,
            "If the instability persists, lower the learning rate (the Playbook's last resort).",
            **_lr_change(hp, 0.5),
        ))
    return out


def _clipping_would_bite(current: float | None, p90: float) -> bool:
    """Clipping at the 90th percentile only helps if the run was not already clipping at or below it."""
    return current is None or current <= 0 or current > 1.05 * p90


def _underfitting(r: TrainingResult, factors, t: Thresholds, hp: Hyperparameters):
    reduction = factors["loss_reduction"].value
    if reduction is None or factors["loss_reduction"].points >= 20:
        return []
    rank = hp.number("lora_r")
    capacity = ({"parameter": hp.name_of("lora_r"), "current_value": _int_if_whole(rank),
                 "suggested_value": int(rank) * 2}
                if rank is not None and rank >= 1 else {})
    change = capacity or _lr_change(hp, 2.0)
    classes = hp.classes()
    chance = ""
    if (level := chance_loss(classes)) is not None:
        chance = (f" For {int(classes)} classes, chance-level loss is ln {int(classes)} = {level:.3g}; "
                  f"the final loss is {r.final_loss:.3g}.")
    if reduction < t.underfit_reduction:
        # reduction > 0 is a fall; the loss moved by -reduction
        how = (f"Loss {moved(-reduction)} instead of falling" if reduction < 0
               else f"Loss barely moved ({moved(-reduction)})")
        return [ImprovementSuggestion(
            Category.UNDERFITTING, Priority.MEDIUM,
            f"{how}: the model is not fitting the training data.{chance} "
            "Regularization will not help; raise capacity (LoRA rank, more target modules) or the learning "
            "rate, and check the data and labels.", **change,
        )]
    how = f"Loss {moved(-reduction)}" if reduction < 0 else f"Loss fell only {reduction:.1%}"
    return [ImprovementSuggestion(
        Category.UNDERFITTING, Priority.LOW,
        f"{how}.{chance} Raise capacity (LoRA rank) or the learning rate.", **change,
    )]


def _convergence(r: TrainingResult, f: Findings | None, hp: Hyperparameters):
    if r.convergence_achieved is not False:
        return []
    c = f.convergence if f else None
    if c and c.measured and c.change is not None and c.change > 0:
        return [ImprovementSuggestion(
            Category.CONVERGENCE, Priority.HIGH,
            f"Loss {moved(c.change)} over the final window (from step {c.window_start_step}): the run is "
            "moving away from its best. Lower the learning rate or decay it to zero by the end.",
            **_lr_change(hp, 0.5),
        )]
    epochs, max_steps = hp.number("epochs"), hp.number("max_steps")
    change: dict = {}
    if max_steps is not None and max_steps > 0:  # Hugging Face: a positive max_steps overrides the epochs
        if math.isfinite(longer := max_steps * 1.5):
            change = {"parameter": hp.name_of("max_steps"), "current_value": _int_if_whole(max_steps),
                      "suggested_value": int(math.ceil(longer))}
    elif epochs is not None and epochs > 0 and math.isfinite(longer := epochs * 1.5):
        change = {"parameter": hp.name_of("epochs"), "current_value": _int_if_whole(epochs),
                  "suggested_value": int(math.ceil(longer))}
    fell = (f" (loss still {moved(c.change)} over the final window)"
            if c and c.change is not None and c.change < 0 and moved(c.change) != "did not change" else "")
    return [ImprovementSuggestion(
        Category.CONVERGENCE, Priority.HIGH,
        f"The run had not converged{fell}: it is compute-bound. Train longer, or decay the learning rate "
        "faster so it settles.", **change,
    )]


def _overfitting(r: TrainingResult, factors, f: Findings | None, hp: Hyperparameters):
    more_dropout = _more_regularization(hp)
    if not r.eval_loss_history:  # final numbers only: the seed's train/eval gap
        gap = factors["overfitting"].value
        if gap is None or gap < 0.10:
            return []
        return [ImprovementSuggestion(
            Category.OVERFITTING, Priority.HIGH if gap >= 0.30 else Priority.MEDIUM,
            f"Eval loss is {gap:.1%} above the training loss: add regularization (LoRA dropout, weight decay) "
            "or more training data.", **more_dropout,
        )]
    g = f.generalization if f else None
    if not (g and g.overfitting):
        return []
    return [
        ImprovementSuggestion(
            Category.OVERFITTING, Priority.HIGH,
            f"Eval loss rose from its best ({g.best_eval_loss:.4g} at step {g.best_step}) to {g.eval_loss:.4g} at "
            f"step {g.eval_step} while training loss kept falling: keep the checkpoint from step {g.best_step} "
            "(load_best_model_at_end=True, metric_for_best_model='eval_loss') or stop training there.",
            "load_best_model_at_end", None, True,
        ),
        ImprovementSuggestion(
            Category.OVERFITTING, Priority.MEDIUM,
            "To overfit later, add regularization (LoRA dropout, weight decay) or more training data.",
            **more_dropout,
        ),
    ]


def _more_regularization(hp: Hyperparameters) -> dict:
    """More LoRA dropout, up to ``MAX_SUGGESTED_LORA_DROPOUT``; past it, weight decay up to
    ``MAX_SUGGESTED_WEIGHT_DECAY``; past both, no value (the advice stands alone)."""
    dropout = hp.number("lora_dropout")
    name = hp.name_of("lora_dropout")
    if dropout is None or not is_valid("lora_dropout", dropout):  # unset, or not a dropout at all: a common one
        return {"parameter": name, "current_value": dropout, "suggested_value": DEFAULT_LORA_DROPOUT}
    if dropout < MAX_SUGGESTED_LORA_DROPOUT:
        return {"parameter": name, "current_value": dropout,
                "suggested_value": min(round(dropout + DEFAULT_LORA_DROPOUT_STEP, 3), MAX_SUGGESTED_LORA_DROPOUT)}
    decay = hp.number("weight_decay")
    name = hp.name_of("weight_decay")
    if decay is None or decay <= 0:  # unset, off, or not a weight decay at all
        return {"parameter": name, "current_value": decay, "suggested_value": DEFAULT_WEIGHT_DECAY}
    if decay < MAX_SUGGESTED_WEIGHT_DECAY:
        return {"parameter": name, "current_value": decay,
                "suggested_value": min(_round_sig(decay * 2), MAX_SUGGESTED_WEIGHT_DECAY)}
    return {}


def _efficiency(r: TrainingResult, factors, f: Findings | None, t: Thresholds, hp: Hyperparameters):
    out = []
    eff = factors["efficiency"]
    if eff.measured and eff.points < 10 and factors["loss_reduction"].points >= 20:
        out.append(ImprovementSuggestion(
            Category.EFFICIENCY, Priority.MEDIUM if eff.points <= 3 else Priority.LOW,
            f"Loss fell only {eff.value:.3g} per epoch: a higher learning rate would get there in fewer epochs.",
            **_lr_change(hp, 2.0),
        ))
    total = r.total_steps
    g = f.generalization if f else None
    if g and g.measured and g.best_step is not None and total and g.eval_points >= 3:
        at = g.best_step / total
        if at <= t.early_best_fraction:
            out.append(ImprovementSuggestion(
                Category.EFFICIENCY, Priority.MEDIUM,
                f"The best eval loss came at step {g.best_step}, {at:.0%} into training: far more steps were "
                "run than needed.", **_shorter(hp, at),
            ))
    c = f.convergence if f else None
    learned = factors["loss_reduction"].measured and factors["loss_reduction"].points >= 20
    if (c and c.converged and learned and c.plateau_start_step is not None and total
            and c.plateau_start_step < 0.5 * total):
        at = c.plateau_start_step / total
        out.append(ImprovementSuggestion(
            Category.EFFICIENCY, Priority.LOW,
            f"The loss was flat from about step {c.plateau_start_step} ({at:.0%} of training): fewer steps are "
            "enough.", **_shorter(hp, at),
        ))
    return out


def _shorter(hp: Hyperparameters, fraction: float) -> dict:
    """Shrink the run's length to a little past ``fraction`` of what it was (never to more than it was:
    a run already at its shortest gets no value)."""
    keep = min(1.0, max(fraction, 0.0) * 1.5)
    for knob in ("max_steps", "epochs"):
        value = hp.number(knob)
        if value is None or value <= 0:
            continue
        shorter: float = max(1, int(math.ceil(value * keep)))
        if shorter >= value and knob == "epochs":  # epochs may be fractional (num_train_epochs is a float)
            shorter = _round_sig(value * keep)
        if not 0 < shorter < value:
            return {}
        return {"parameter": hp.name_of(knob), "current_value": _int_if_whole(value), "suggested_value": shorter}
    return {}


def _int_if_whole(x: float):
    return int(x) if float(x).is_integer() else x


MISSING_ADVICE = {
    "overfitting": (Category.OVERFITTING,
                    "Overfitting was not measured: hold out evaluation data and log an eval loss "
                    "(eval_fraction > 0, eval_strategy='steps')."),
    "stability": (Category.STABILITY,
                  "Stability was not measured: log the gradient norm (Hugging Face's Trainer logs grad_norm)."),
    "efficiency": (Category.EFFICIENCY,
                   "Efficiency was not measured: log an `epoch` metric (Hugging Face's Trainer does), or an `epochs` "
                   "param when max_steps is not set."),
    "convergence": (Category.CONVERGENCE,
                    "Convergence was not measured: log the loss more often (a smaller logging_steps)."),
    "loss_reduction": (Category.UNDERFITTING,
                       "Loss reduction was not measured: the loss must start above zero for a relative reduction."),
}


def _unmeasured(factors):
    return [
        ImprovementSuggestion(MISSING_ADVICE[name][0], Priority.LOW, MISSING_ADVICE[name][1])
        for name, factor in factors.items() if not factor.measured
    ]
