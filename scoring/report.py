"""The human-readable report of an analysis (``quality/report.md`` and the MLflow run description)."""

from __future__ import annotations

from typing import Any

from .models import SCHEMA_VERSION, QualityAnalysis, format_value

FACTOR_TITLES = {
    "loss_reduction": "Loss reduction",
    "convergence": "Convergence",
    "stability": "Stability",
    "overfitting": "Overfitting",
    "efficiency": "Efficiency",
}


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format_value(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def render_markdown(analysis: QualityAnalysis) -> str:
    lines = [
        f"# Training quality: {analysis.quality_score:g}/100",
        "",
        f"**{analysis.overall_assessment}**",
        "",
    ]
    unmeasured = [FACTOR_TITLES[n] for n, f in analysis.factors.items() if not f.measured]
    if unmeasured:
        lines += [f"Not measured (left out of the score, which is rescaled over the rest): {', '.join(unmeasured)}.", ""]
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
    lines += ["", f"<sub>peft-studio quality analysis, schema {SCHEMA_VERSION}</sub>", ""]
    return "\n".join(lines)
