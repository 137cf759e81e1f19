"""Pure quality analysis of a training run: a 0-100 score, its factors, and what to change next.

Imports numpy, pandas, scipy and pymannkendall only (no MLflow, torch or apprise), so it can score any history.
The data model (``models``) knows neither how it is drawn nor how it is written: ``render_markdown`` writes the
report and ``scoring.plot.loss_curve_figure`` draws the curves (matplotlib, imported only there).
"""

from .compare import (
    IGNORED_PARAMS,
    ABResult,
    ParamEffect,
    ab_compare,
    comparison_markdown,
    differing_params,
    eval_noise,
    next_configuration,
    param_effects,
    run_params,
)
from .curves import METRIC_CANDIDATES, Curves, curves_from_history, detect_metric_names
from .models import (
    SCHEMA_VERSION,
    Category,
    FactorScore,
    ImprovementSuggestion,
    Priority,
    QualityAnalysis,
    TrainingResult,
    Verdict,
)
from .quality import REQUIRED_SUMMARY_FIELDS, analyze_history, analyze_training_quality
from .report import render_markdown
from .rules import Alert, LiveRules
from .tables import FACTOR_NAMES, TABLES
from .thresholds import Thresholds

__all__ = [
    "METRIC_CANDIDATES", "Curves", "curves_from_history", "detect_metric_names", "SCHEMA_VERSION", "Category",
    "FactorScore", "ImprovementSuggestion", "Priority", "QualityAnalysis", "TrainingResult",
    "REQUIRED_SUMMARY_FIELDS", "analyze_history", "analyze_training_quality", "FACTOR_NAMES", "TABLES", "Thresholds",
    "IGNORED_PARAMS", "ABResult", "ParamEffect", "ab_compare", "comparison_markdown", "differing_params",
    "eval_noise", "next_configuration", "param_effects", "run_params", "Alert", "LiveRules", "Verdict",
    "render_markdown",
]
