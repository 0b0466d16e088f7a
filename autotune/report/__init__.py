"""The evaluation report: scikit-learn metrics, rendered as Markdown and JSON."""

from autotune.report.evaluate import classification_metrics
from autotune.report.render import render_markdown, write_report

__all__ = ["classification_metrics", "render_markdown", "write_report"]
