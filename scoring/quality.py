"""Score a training run on the product's five factors and say what to change.

``analyze_training_quality`` scores a ``TrainingResult``; ``analyze_history`` derives that result from a
logged metric history first. Both end in ``build_analysis``: points from the fixed tables, plain-words
explanations with the numbers, and prioritized suggestions that name concrete values where the run's
parameters are known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .curves import Curves, curves_from_history
from .models import (
    FactorScore,
    QualityAnalysis,
    TrainingResult,
    Verdict,
)
from .params import Hyperparameters
from .rules import HIGH, Findings, diagnose
from .tables import TABLES, assessment_for
from .thresholds import Thresholds
from .wording import moved, span
from .wording import pct as _pct

# A run that did not learn is never Good or Excellent, whatever its other factors earn: the score stops here.
NOT_LEARNED_SCORE_CAP = 49.0

# Fields every metrics summary carries (None where not measured); tests and users rely on them.
REQUIRED_SUMMARY_FIELDS = (
    "initial_loss",
    "final_loss",
    "loss_reduction_pct",
    "total_steps",
    "epochs_completed",
    "loss_per_epoch",
    "convergence_achieved",
    "gradient_norm_stable",
    "validation_loss",
    "overfitting_gap_pct",
)


def analyze_training_quality(result: TrainingResult, thresholds: Thresholds | None = None) -> QualityAnalysis:
    """Score a finished run. Histories in ``result``, when given, fill the flags left as ``None``."""
    thresholds = thresholds or Thresholds()
    findings = curves = None
    finite_points = sum(1 for v in result.loss_history if math.isfinite(v))
    if finite_points >= 2:
        curves = Curves.from_values(result.loss_history, result.eval_loss_history, result.gradient_norms,
                                    result.total_steps)
        hp = Hyperparameters(result.hyperparameters)
        findings = diagnose(curves, thresholds, max_grad_norm=hp.number("max_grad_norm"), classes=hp.classes())
        result = dataclasses.replace(
            result,
            convergence_achieved=_first_known(result.convergence_achieved, findings.convergence.converged),
            gradient_norm_stable=_first_known(result.gradient_norm_stable, findings.stability.stable),
            validation_loss=_first_known(result.validation_loss, findings.generalization.eval_loss),
        )
    return build_analysis(result, findings, curves, thresholds)


def analyze_history(
    history: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    metric_names: Mapping[str, str] | None = None,
    thresholds: Thresholds | None = None,
) -> QualityAnalysis:
    """Analyze a metric history (DataFrame with columns key, step, value), e.g. read back from MLflow.

    ``params`` are the run's hyperparameters (strings are fine, as MLflow stores them); ``metric_names``
    overrides the detected metric per role (train_loss, eval_loss, grad_norm, learning_rate, epoch).
    Raises ``ValueError`` when the history has no usable training loss curve.
    """
    thresholds = thresholds or Thresholds()
    curves, used = curves_from_history(history, metric_names)
    hp = Hyperparameters(params)
    findings = diagnose(curves, thresholds, max_grad_norm=hp.number("max_grad_norm"), classes=hp.classes())
    ends, gen = findings.endpoints, findings.generalization
    learning_rate = None
    if curves.learning_rate is not None:
        finite_lr = curves.learning_rate[curves.learning_rate > 0]
        learning_rate = float(finite_lr.max()) if len(finite_lr) else None
    result = TrainingResult(
        final_loss=ends.final,
        initial_loss=ends.initial,
        epochs_completed=_epochs(curves, hp),
        total_steps=findings.total_steps if findings.total_steps > 0 else None,
        convergence_achieved=findings.convergence.converged,
        gradient_norm_stable=findings.stability.stable,
        validation_loss=gen.eval_loss,
        train_loss_at_validation=gen.train_loss,
        loss_history=tuple(curves.train_loss),
        eval_loss_history=tuple(curves.eval_loss) if curves.eval_loss is not None else (),
        gradient_norms=tuple(curves.grad_norm) if curves.grad_norm is not None else (),
        learning_rate=learning_rate if learning_rate and math.isfinite(learning_rate)
        else (lr if (lr := hp.number("learning_rate")) and lr > 0 else None),
        hyperparameters=dict(params or {}),
    )
    return build_analysis(result, findings, curves, thresholds, used)


def _first_known(given, derived):
    return given if given is not None else derived


def _epochs(curves: Curves, hp: Hyperparameters) -> float | None:
    """The epochs the run trained, as Hugging Face records them.

    The logged ``epoch`` metric wins: its last value (by step) is the epochs actually trained, also when a
    run stopped before its planned ``num_train_epochs``, and the only measure when ``max_steps`` > 0 set the
    length. Without it, the planned ``epochs`` / ``num_train_epochs`` param counts only when ``max_steps``
    is unset or not positive (the Trainer logs -1 when training by epochs); a positive ``max_steps``
    overrides the epochs, and how many epochs those steps cover is then unknown.
    """
    if curves.epoch is not None:
        trained = curves.epoch[np.isfinite(curves.epoch) & (curves.epoch > 0)]
        if len(trained):
            return float(trained.iloc[-1])
    epochs, max_steps = hp.number("epochs"), hp.number("max_steps")
    if epochs is None or epochs <= 0 or (max_steps is not None and max_steps > 0):
        return None
    return epochs


# --- the five factors --------------------------------------------------------------------------------


def _factor(name: str, value: float | None, explanation: str, measured: bool = True) -> FactorScore:
    table = TABLES[name]
    points = table.points(value) if measured and value is not None else 0
    return FactorScore(name, points, table.max_points, measured, explanation, value)


def _unmeasured(name: str, why: str) -> FactorScore:
    return FactorScore(name, 0, TABLES[name].max_points, False, f"not measured: {why}")


def _loss_reduction(r: TrainingResult) -> FactorScore:
    if r.initial_loss <= 0:
        return _unmeasured(
            "loss_reduction", f"the initial loss is {r.initial_loss:.4g}, so a relative reduction is undefined"
        )
    reduction = (r.initial_loss - r.final_loss) / r.initial_loss
    verb = "fell" if reduction >= 0 else "rose"
    points = TABLES["loss_reduction"].points(reduction)
    return _factor(
        "loss_reduction",
        reduction,
        f"loss {verb} from {r.initial_loss:.4g} to {r.final_loss:.4g}, a {_pct(abs(reduction))} "
        f"{'reduction' if reduction >= 0 else 'increase'}; {TABLES['loss_reduction'].band(reduction, percent=True)} "
        f"earns {points}/30",
    )


def _convergence(r: TrainingResult, f: Findings | None) -> FactorScore:
    c = f.convergence if f else None
    if r.convergence_achieved is None:
        return _unmeasured("convergence", c.reason if c and c.reason else "convergence was not reported")
    value = 1.0 if r.convergence_achieved else 0.0
    if c is None or not c.measured or c.converged != r.convergence_achieved:
        state = "converged" if r.convergence_achieved else "not converged"
        return _factor("convergence", value, f"reported as {state}")
    change = moved(c.change)
    trend = c.trend
    stats = (f"Mann-Kendall z={trend.z:.2f}, p={trend.p_value:.2g}, Hamed-Rao corrected" if trend
             else "too few points for a trend test")
    where = f"over the final window (steps {span(c.window_start_step, f.endpoints.last_step)}; {stats})"
    matters = (f"a change must exceed {_pct(c.material)} of the loss level to matter here: beyond its noise, "
               "5% of the level and 1% of the run's fall")
    if c.converged:
        why = ("no significant trend" if trend and not trend.significant and abs(c.change) > c.material
               else "within its noise")
        text = f"loss {change} {where}: {why}, so the run had converged ({matters})"
        if c.plateau_start_step is not None:
            text += f"; the curve was flat from about step {c.plateau_start_step}"
    else:
        still = "" if change == "did not change" else "still "
        text = f"loss {still}{change} {where}, so the run had not converged ({matters})"
    return _factor("convergence", value, text)


def _stability(r: TrainingResult, f: Findings | None) -> FactorScore:
    s = f.stability if f else None
    if r.gradient_norm_stable is None:
        return _unmeasured("stability", "no gradient norm was logged and the loss shows no failure")
    value = 1.0 if r.gradient_norm_stable else 0.0
    if s is None or s.stable != r.gradient_norm_stable:
        return _factor("stability", value, f"reported as {'stable' if r.gradient_norm_stable else 'unstable'}")
    problems = []
    if s.nonfinite_loss_steps:
        problems.append(f"non-finite loss at step(s) {_steps(s.nonfinite_loss_steps)}")
    if s.breakdown_steps:
        problems.append(f"a loss of exactly 0.0 beside a NaN gradient norm at step(s) {_steps(s.breakdown_steps)} "
                        "(numerical breakdown, not a perfect fit)")
    if s.skipped_steps:
        problems.append(f"{len(s.skipped_steps)} non-finite gradient norm(s) with a finite loss at step(s) "
                        f"{_steps(s.skipped_steps)} (fp16 loss scaling skips such a step; only repeated ones count)")
    if s.divergence_step is not None:
        problems.append(f"loss diverged from step {s.divergence_step} (a sustained climb back of more than half "
                        "of what it had fallen, beyond its noise)")
    if s.spike_count:
        problems.append(f"{s.spike_count} spike(s) (loss at {_steps(s.loss_spike_steps) or 'none'}, "
                        f"gradient norm at {_steps(s.grad_spike_steps) or 'none'}; {s.spike_limit} allowed for a "
                        "run of this length)")
    if r.gradient_norm_stable:
        basis = "gradient norm stayed finite" if r.gradient_norms and not s.skipped_steps else "loss stayed finite"
        detail = f"; {'; '.join(problems)}, below the limit" if problems else ", no spikes"
        return _factor("stability", value, f"{basis}, no divergence{detail}")
    return _factor("stability", value, "unstable: " + "; ".join(problems))


def _overfitting(r: TrainingResult, f: Findings | None) -> FactorScore:
    """With an eval history: Prechelt's generalization loss, scored only when eval loss rose clearly and
    durably from its best while training loss kept falling. With final numbers only: the seed's gap."""
    g = f.generalization if f else None
    if r.eval_loss_history:
        if g is None or not g.measured:
            return _unmeasured("overfitting", g.reason if g and g.reason else "too few evaluations")
        return _trajectory_factor(g)
    if r.validation_loss is None:
        return _unmeasured("overfitting", g.reason if g and g.reason else "no eval loss was logged")
    train = r.train_loss_at_validation if r.train_loss_at_validation is not None else r.final_loss
    if train <= 0:
        return _unmeasured("overfitting", f"the training loss is {train:.4g}, so a relative gap is undefined")
    gap = (r.validation_loss - train) / train
    points = TABLES["overfitting"].points(gap)
    text = (f"eval loss {r.validation_loss:.4g} against training loss {train:.4g}: a gap of {_pct(gap)}; "
            f"{TABLES['overfitting'].band(gap, percent=True)} earns {points}/15")
    return _factor("overfitting", gap, text)


def _trajectory_factor(g) -> FactorScore:
    gl = (g.generalization_loss or 0.0) / 100.0
    value = gl if g.overfitting else 0.0
    points = TABLES["overfitting"].points(value)
    best = f"best eval loss {g.best_eval_loss:.4g} at step {g.best_step}"
    if g.overfitting:
        text = (f"eval loss rose from its {best} to {g.eval_loss:.4g} at step {g.eval_step} ({_pct(gl)} above, "
                f"{g.evals_above} evaluations in a row beyond its noise of {g.margin:.3g}) while training loss "
                f"kept falling: overfitting; {TABLES['overfitting'].band(value, percent=True)} earns {points}/15")
    elif g.eval_step == g.best_step:
        text = f"eval loss was still at its best at the last evaluation ({best}): no overfitting; earns {points}/15"
    else:
        why = ("training loss rose too, so this is not overfitting" if g.evals_above and not g.train_still_falling
               else "not clearly and durably above it")
        text = (f"eval loss ended at {g.eval_loss:.4g} against its {best}, {why} (a rise must exceed "
                f"{g.margin:.3g} for two evaluations in a row): no overfitting; earns {points}/15")
    if g.gap is not None:
        text += f". The train/eval gap ({_pct(g.gap)}) is shown for reference; a gap alone is not overfitting"
    return _factor("overfitting", value, text)


def _efficiency(r: TrainingResult) -> FactorScore:
    if r.epochs_completed is None:
        return _unmeasured("efficiency", "the number of epochs is unknown (log an `epoch` metric, or an `epochs` "
                                         "param when max_steps is not set)")
    rate = (r.initial_loss - r.final_loss) / r.epochs_completed
    points = TABLES["efficiency"].points(rate)
    per_epoch = moved(-rate, lambda x: f"{x:.4g}")  # rate > 0 is a fall
    per_epoch = per_epoch if per_epoch == "did not change" else f"{per_epoch} per epoch"
    return _factor(
        "efficiency",
        rate,
        f"loss {per_epoch} over {r.epochs_completed:.3g} epoch(s); "
        f"{TABLES['efficiency'].band(rate)} earns {points}/10",
    )


def _steps(steps: tuple[int, ...], limit: int = 5) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" and {len(steps) - limit} more" if len(steps) > limit else "")


# --- assembling --------------------------------------------------------------------------------------


def build_analysis(
    result: TrainingResult,
    findings: Findings | None,
    curves: Curves | None,
    thresholds: Thresholds,
    metric_names: Mapping[str, str] | None = None,
) -> QualityAnalysis:
    from .suggestions import suggest  # suggestions read the factors; kept in their own module

    factors = {
        "loss_reduction": _loss_reduction(result),
        "convergence": _convergence(result, findings),
        "stability": _stability(result, findings),
        "overfitting": _overfitting(result, findings),
        "efficiency": _efficiency(result),
    }
    available = sum(f.max_points for f in factors.values() if f.measured)
    verdicts = _verdicts(result, factors, findings)
    learned = verdicts["learned"].answer != "no"
    if available == 0 and learned:
        raise ValueError("nothing could be measured: the initial loss is not positive and no other factor was logged")
    earned = sum(f.points for f in factors.values() if f.measured)
    score = round(100.0 * earned / available, 1) if available else 0.0
    if not learned:
        score = min(score, NOT_LEARNED_SCORE_CAP)
    concern = _top_concern(verdicts)
    suggestions = suggest(result, factors, findings, thresholds, Hyperparameters(result.hyperparameters), concern)
    return QualityAnalysis(
        quality_score=score,
        overall_assessment=assessment_for(score),
        factors=factors,
        suggestions=tuple(suggestions),
        metrics_summary=_summary(result, factors, findings),
        events=_events(findings),
        metric_names=dict(metric_names or {}),
        verdicts=verdicts,
        top_concern=concern,
        curves=curves,
    )


def _verdicts(r: TrainingResult, factors: Mapping[str, FactorScore], f: Findings | None) -> dict[str, Verdict]:
    """The four readings a user asks for first, each with how sure the analysis is."""
    if f is None:  # final numbers only: what the caller reported, nothing inferred
        learned = Verdict("not_measured", "low", "a loss history is needed to tell whether the model learned")
        converged = _reported(r.convergence_achieved, "convergence")
        unstable = _reported(None if r.gradient_norm_stable is None else not r.gradient_norm_stable, "instability")
        gap = factors["overfitting"]
        overfit = (Verdict("not_measurable", "low", gap.explanation) if not gap.measured
                   else Verdict("yes" if gap.points < 15 else "no", "low", gap.explanation))
        return {"learned": learned, "converged": converged, "unstable": unstable, "overfit": overfit}
    lf, c, s, g = f.learning, f.convergence, f.stability, f.generalization
    learned = Verdict("yes" if lf.learned else "no", lf.confidence, lf.reason)
    if c.measured:
        converged = Verdict("yes" if c.converged else "no", c.confidence, factors["convergence"].explanation)
    else:
        converged = Verdict("cannot_tell", "low", c.reason)
    if s.measured:
        unstable = Verdict("no" if s.stable else "yes", s.confidence, factors["stability"].explanation)
    else:
        unstable = Verdict("not_measured", "low", factors["stability"].explanation)
    if g.measured:
        overfit = Verdict("yes" if g.overfitting else "no", g.confidence, factors["overfitting"].explanation)
    else:
        overfit = Verdict("not_measurable", "low", g.reason)
    return {"learned": learned, "converged": converged, "unstable": unstable, "overfit": overfit}


def _reported(flag: bool | None, what: str) -> Verdict:
    if flag is None:
        return Verdict("not_measured", "low", f"{what} was not reported")
    return Verdict("yes" if flag else "no", HIGH, f"{what} reported by the caller")


def _top_concern(verdicts: Mapping[str, Verdict]) -> str:
    """The one thing to act on first, most fundamental first (a dead run before a noisy one)."""
    if verdicts["learned"].answer == "no":
        return "not_learned"
    if verdicts["unstable"].answer == "yes":
        return "unstable"
    if verdicts["overfit"].answer == "yes":
        return "overfitting"
    if verdicts["converged"].answer == "no":
        return "not_converged"
    return "none"


def _summary(r: TrainingResult, factors: Mapping[str, FactorScore], f: Findings | None) -> dict[str, Any]:
    reduction = factors["loss_reduction"].value
    gap = factors["overfitting"].value
    summary: dict[str, Any] = {
        "initial_loss": r.initial_loss,
        "final_loss": r.final_loss,
        "loss_reduction_pct": None if reduction is None else round(100 * reduction, 2),
        "total_steps": r.total_steps,
        "epochs_completed": r.epochs_completed,
        "loss_per_epoch": factors["efficiency"].value,
        "convergence_achieved": r.convergence_achieved,
        "gradient_norm_stable": r.gradient_norm_stable,
        "validation_loss": r.validation_loss,
        "overfitting_gap_pct": None if gap is None else round(100 * gap, 2),
        "learning_rate": r.learning_rate,
        "factors_measured": sum(1 for x in factors.values() if x.measured),
    }
    if f is not None:
        summary.update(
            initial_loss_raw=f.endpoints.initial_raw,
            final_loss_raw=f.endpoints.final_raw,
            smoothing_window_points=f.endpoints.window,
            logged_points=f.points,
            final_window_change_pct=None if f.convergence.change is None else round(100 * f.convergence.change, 2),
            loss_noise=f.endpoints.noise,
            best_eval_loss=f.generalization.best_eval_loss,
            best_eval_step=f.generalization.best_step,
            generalization_loss_pct=f.generalization.generalization_loss,
            train_eval_gap_pct=None if f.generalization.gap is None else round(100 * f.generalization.gap, 2),
            grad_norm_p90=f.stability.grad_norm_p90,
            clipped_fraction=f.stability.clipped_fraction,
        )
    return summary


def _events(f: Findings | None) -> dict[str, Any]:
    if f is None:
        return {}
    s, c, g = f.stability, f.convergence, f.generalization
    return {
        "best_eval_step": g.best_step,
        "plateau_start_step": c.plateau_start_step,
        "convergence_window_start_step": c.window_start_step,
        "divergence_step": s.divergence_step,
        "loss_spike_steps": list(s.loss_spike_steps),
        "grad_norm_spike_steps": list(s.grad_spike_steps),
        "nonfinite_steps": sorted({*s.nonfinite_loss_steps, *s.nonfinite_grad_steps}),
        "skipped_steps": list(s.skipped_steps),
    }
