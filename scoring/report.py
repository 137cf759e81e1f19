"""The human-readable report of an analysis (``quality/report.md`` and the MLflow run description)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models import SCHEMA_VERSION, QualityAnalysis, format_value

FACTOR_TITLES = {
    "loss_reduction": "Loss reduction",
    "convergence": "Convergence",
    "stability": "Stability",
    "overfitting": "Overfitting",
    "efficiency": "Efficiency",
}


VERDICT_QUESTIONS = {
    "learned": "Did the model learn?",
    "converged": "Had the training loss converged?",
    "unstable": "Was training unstable?",
    "overfit": "Did it overfit (eval loss rising from its best)?",
}
CONCERN_WORDS = {
    "not_learned": "the model did not learn",
    "unstable": "training was unstable",
    "overfitting": "overfitting",
    "not_converged": "not converged: still improving",
    "none": "none",
}


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format_value(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def render_markdown(analysis: QualityAnalysis, extra_sections: Sequence[str] = ()) -> str:
    """The report; ``extra_sections`` (markdown text, e.g. the job's "Model outputs") go before the footer."""
    lines = [
        f"# Training quality: {analysis.quality_score:g}/100",
        "",
        f"**{analysis.overall_assessment}**",
        "",
    ]
    if analysis.verdicts:
        lines += [f"Top concern: **{CONCERN_WORDS.get(analysis.top_concern, analysis.top_concern)}**.", "",
                  "## Verdicts", "", "| Question | Answer | Confidence |", "|---|---|---|"]
        lines += [f"| {VERDICT_QUESTIONS.get(name, name)} | {v.answer.replace('_', ' ')} | {v.confidence} |"
                  for name, v in analysis.verdicts.items()]
        learned = analysis.verdicts.get("learned")
        if learned is not None and learned.answer == "no":
            lines += ["", f"The model did not learn: {learned.reason}. A run that did not learn is rated Poor "
                      "whatever its other factors earn."]
        lines.append("")
    unmeasured = [FACTOR_TITLES[n] for n, f in analysis.factors.items() if not f.measured]
    if unmeasured:
        lines += [f"Not measured (left out of the score, which is rescaled over the rest): {', '.join(unmeasured)}.",
                  ""]
    lines += ["## Score breakdown", "", "| Factor | Points | Why |", "|---|---|---|"]
    for name, f in analysis.factors.items():
        points = f"{f.points:g}/{f.max_points}" if f.measured else f"n/a (of {f.max_points})"
        lines.append(f"| {FACTOR_TITLES[name]} | {points} | {f.explanation} |")
    lines += ["", "## Suggestions", ""]
    if not analysis.suggestions:
        lines.append("None: nothing in this run calls for a change.")
    for i, s in enumerate(analysis.suggestions, 1):
        change = f" Change: `{s.change}`." if s.change else ""
        lines.append(f"{i}. **{s.priority.value}** ({s.category.value}): {s.message}{change}")
    lines += ["", "## Metrics", "", "| Metric | Value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in analysis.metrics_summary.items()]
    events = {k: v for k, v in analysis.events.items() if v not in (None, [], ())}
    if events:
        lines += ["", "## Events in the history", "", "| Event | Step(s) |", "|---|---|"]
        lines += [f"| {key.replace('_', ' ')} | {_cell(value)} |" for key, value in events.items()]
    if analysis.metric_names:
        used = ", ".join(f"{role} = `{name}`" for role, name in analysis.metric_names.items())
        lines += ["", f"Metrics read: {used}."]
    for section in extra_sections:
        lines += ["", section.strip()]
    lines += ["", f"<sub>peft-studio quality analysis, schema {SCHEMA_VERSION}</sub>", ""]
    return "\n".join(lines)
