"""The evaluation report: scikit-learn metrics, the search's analysis, rendered as JSON,
Markdown and one self-contained HTML file with matplotlib figures."""

from autotune.report.analysis import knob_effects, param_importances, pareto_front
from autotune.report.evaluate import classification_metrics, evaluation_metrics, regression_metrics
from autotune.report.render import render_markdown, rerender, write_report

__all__ = [
    "classification_metrics",
    "evaluation_metrics",
    "knob_effects",
    "param_importances",
    "pareto_front",
    "regression_metrics",
    "render_markdown",
    "rerender",
    "write_report",
]
