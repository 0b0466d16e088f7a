"""Evaluation of the trained model with scikit-learn's metrics."""

from __future__ import annotations

from typing import Any, Sequence

from sklearn.metrics import classification_report, confusion_matrix


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
        "labels": names,
        "accuracy": float(table.get("accuracy", sum(a == b for a, b in zip(y_true, y_pred)) / max(len(y_true), 1))),
        "report": table,
        "report_text": text,
        "confusion_matrix": matrix.tolist(),
        "samples": len(y_true),
    }
