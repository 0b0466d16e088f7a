"""Evaluation of the trained model with scikit-learn's metrics.

A classifier (integer targets, class logits) gets scikit-learn's classification report
and confusion matrix; a regression model (float targets) gets the mean absolute error,
the root mean squared error and R^2. ``evaluation_metrics`` picks by the targets' type.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from sklearn.metrics import classification_report, confusion_matrix, mean_absolute_error, mean_squared_error, r2_score


def evaluation_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], class_names: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """Classification metrics for integer targets, regression metrics for float ones
    (one float per sample, or a list of floats per sample); None without targets."""
    if not y_true:
        return None
    if all(isinstance(y, int) and not isinstance(y, bool) for y in y_true):
        return classification_metrics(y_true, y_pred, class_names)
    return regression_metrics(y_true, y_pred)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """scikit-learn's classification report (as a table and as text) and confusion matrix.

    Labels are every class seen in the targets or predictions; ``class_names`` (the model
    file's CLASS_NAMES) names them by index.
    """
    labels = sorted(set(y_true) | set(y_pred))
    if class_names is not None:
        names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels]
    else:
        names = [str(i) for i in labels]
    table = classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    text = classification_report(
        y_true, y_pred, labels=labels, target_names=names, digits=4, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "kind": "classification",
        "labels": names,
        "accuracy": float(table.get("accuracy", sum(a == b for a, b in zip(y_true, y_pred)) / max(len(y_true), 1))),
        "report": table,
        "report_text": text,
        "confusion_matrix": matrix.tolist(),
        "samples": len(y_true),
    }


def regression_metrics(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, Any]:
    """Mean absolute error, root mean squared error and R^2 (scikit-learn), averaged over
    the outputs when each sample has several. R^2 is None when the targets do not vary
    (it is undefined then)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length, but got {len(y_true)} and {len(y_pred)}")
    if not y_true:
        raise ValueError("regression metrics need at least one sample, but got none")
    mse = float(mean_squared_error(y_true, y_pred))
    constant = len({_key(y) for y in y_true}) < 2
    return {
        "kind": "regression",
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": math.sqrt(mse),
        "mse": mse,
        "r2": None if constant else float(r2_score(y_true, y_pred)),
        "outputs": len(y_true[0]) if isinstance(y_true[0], (list, tuple)) else 1,
        "samples": len(y_true),
    }


def _key(y: Any) -> Any:
    return tuple(y) if isinstance(y, (list, tuple)) else y
