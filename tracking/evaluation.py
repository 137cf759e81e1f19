"""The end of a run's look at what the model does: task metrics, the samples, the judge's verdicts.

``evaluate_outputs`` computes them (before the loss analysis, so the report can name them), ``Evaluation``
logs them to the run after it, renders the report's "Model outputs" section (markdown handed to
``scoring.report.render_markdown`` as plain text) and the completion message's lines. Nothing here may fail
the run: a metric that cannot be computed is reported missing, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from notify.events import judge_lines, sample_lines

from .config import TrainConfig
from .judge import JudgeResult, judge_samples
from .samples import SAMPLES_TABLE
from .task_metrics import PREDICTIONS_TABLE, TaskMetrics, causal_lm_metrics, classification_metrics

log = logging.getLogger(__name__)

REPEATING_BELOW = 0.5  # distinct word pairs / word pairs of an output below this: it repeats itself


@dataclass
class Evaluation:
    task: TaskMetrics = field(default_factory=TaskMetrics)
    sample_rows: list[dict] = field(default_factory=list)  # every milestone's rows
    final_rows: list[dict] = field(default_factory=list)  # the last milestone's rows
    judge: JudgeResult | None = None
    errors: list[str] = field(default_factory=list)

    def log(self, client, run_id: str) -> None:
        for what, part in (("task metrics", self.task), ("judge verdicts", self.judge)):
            if part is None:
                continue
            try:
                part.log(client, run_id)
            except Exception as exc:
                log.warning("could not log the %s to run %s: %s", what, run_id, exc)

    @property
    def suggestion(self) -> str | None:
        """Advice the outputs call for (the five-factor score does not see them)."""
        repeating = [r for r in self.final_rows if repeats_itself(r["output"])]
        judged_low = False
        if self.judge is not None:
            mean = self.judge.means.get("judge/guidelines/mean")
            judged_low = mean is not None and mean < 0.5
        if self.final_rows and len(repeating) * 2 > len(self.final_rows):
            return (f"{len(repeating)} of {len(self.final_rows)} final samples repeat themselves: train longer or on "
                    "more data; when generating, a repetition_penalty (e.g. 1.2) hides it")
        if judged_low:
            return ("the judge found most final samples off its rubric: read the samples table, then train longer, "
                    "on more data, or with a lower learning_rate")
        return None

    def report_section(self) -> str:
        lines = ["## Model outputs", ""]
        metrics = self.task.metrics
        if metrics:
            lines += ["| Task metric (eval split, final adapter) | Value |", "|---|---|"]
            lines += [f"| {name} | {value:.4g} |" for name, value in metrics.items()]
            lines.append("")
        if self.task.png is not None:
            lines += ["Confusion matrix: `evaluation/confusion_matrix.png` (counts in `evaluation/confusion_matrix"
                      f".json`, every prediction in `{PREDICTIONS_TABLE}`).", ""]
        if self.task.note:
            lines += [f"Not measured: {self.task.note}.", ""]
        if self.sample_rows:
            steps = sorted({r["step"] for r in self.sample_rows})
            lines += [f"Samples: {len({r['prompt'] for r in self.sample_rows})} prompt(s) at step(s) "
                      f"{', '.join(map(str, steps))}, in `{SAMPLES_TABLE}`.", ""]
            first = self.sample_rows[0]["prompt"]
            mine = [r for r in self.sample_rows if r["prompt"] == first]
            lines += ["| Step | Prompt | Output |", "|---|---|---|"]
            lines += [f"| {r['step']} | {_cell(r['prompt'])} | {_cell(r['output'])} |" for r in mine]
            lines.append("")
        if self.judge is not None:
            lines += _judge_section(self.judge)
        suggestion = self.suggestion
        if suggestion:
            lines += [f"Suggestion from the outputs: {suggestion}.", ""]
        lines += [f"Not evaluated: {e}." for e in self.errors]
        return "\n".join(lines).rstrip() + "\n"

    def message_lines(self) -> list[str]:
        lines = []
        for name in ("task/accuracy", "task/macro_f1", "task/perplexity"):
            if name in self.task.metrics:
                lines.append(f"{name.split('/', 1)[1].replace('_', '-')}: {self.task.metrics[name]:.4g}")
        if lines:
            lines = [", ".join(lines)]
        first = self.sample_rows[0]["prompt"] if self.sample_rows else None
        if first is not None:
            mine = [r for r in self.sample_rows if r["prompt"] == first]
            lines += sample_lines(first, mine[0]["output"], mine[-1]["output"], mine[0]["step"], mine[-1]["step"])
        if self.judge is not None:
            lines += judge_lines(self.judge.means.get("judge/mean_score"), len(self.judge.verdicts), self.judge.error)
        suggestion = self.suggestion
        if suggestion:
            lines.append(f"Outputs: {suggestion}.")
        return lines


def _judge_section(judge: JudgeResult) -> list[str]:
    lines = [f"### LLM judge ({judge.model})", ""]
    if judge.error:
        lines += [f"**The judge could not be used: {judge.error}.** The rest of this analysis stands without it.",
                  ""]
    means = judge.means
    if means:
        lines += [f"Mean judge score: {means['judge/mean_score']:.2f} over {len(judge.verdicts)} verdict(s) (1 = yes, "
                  f"0 = no); every verdict and rationale is in `evaluation/judge_verdicts.json`.", "",
                  "| Scorer | Mean |", "|---|---|"]
        lines += [f"| {k.split('/')[1]} | {v:.2f} |" for k, v in means.items() if k != "judge/mean_score"]
        lines.append("")
    return lines


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def repeats_itself(text: str) -> bool:
    """Whether an output is mostly the same word pairs over and over."""
    words = str(text).lower().split()
    pairs = list(zip(words, words[1:]))
    return len(pairs) >= 6 and len(set(pairs)) / len(pairs) < REPEATING_BELOW


def evaluate_outputs(config: TrainConfig, trainer, data, sampler) -> Evaluation:
    """Task metrics of the final adapter, and the judge's verdicts on the last samples when ``judge`` is set."""
    result = Evaluation()
    if sampler is not None:
        result.sample_rows = list(sampler.rows)
        result.final_rows = sampler.final_rows()
    try:
        if config.task == "classification":
            result.task = classification_metrics(trainer, data.eval_texts, data.eval_labels or [], data.label_names,
                                                 config.output_dir)
        else:
            result.task = causal_lm_metrics(trainer, result.final_rows)
    except Exception as exc:  # the run trained; a metric that cannot be computed is reported, not raised
        log.warning("could not compute the task metrics: %s", exc)
        result.errors.append(f"task metrics ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if config.judge.strip() and config.task == "causal-lm":
        result.judge = judge_samples(config.judge.strip(), result.final_rows, config.judge_guidelines,
                                     config.judge_url, config.judge_timeout)
    return result
