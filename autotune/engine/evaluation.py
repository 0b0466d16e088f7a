"""Evaluation of a model on the validation loader: the mean loss, and what the report's
metrics need (``report.evaluate``): the accuracy and every target and prediction for a
classifier (class logits against integer targets), every target and prediction for a
regression model (float outputs of the targets' shape). An output that is not a tensor
(a Hugging Face ``ModelOutput``, a dict, a tuple) is read by ``calling.logits_of``."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from autotune.engine import distributed, knobs
from autotune.engine.data import batch_len, to_device
from autotune.engine.distributed import SINGLE, Dist
from autotune.model import calling
from autotune.model.task import Task

# Regression targets with more values a sample than this (images, sequences) are not
# collected: per-value metrics of such outputs say little, and would fill memory.
MAX_REGRESSION_WIDTH = 16


@dataclass
class EvalResult:
    """Validation metrics; ``y_true``/``y_pred`` are kept for the report's metrics: class
    indices for a classifier, floats (or a list of floats a sample) for regression."""

    loss: float
    accuracy: float | None
    samples: int
    y_true: list[Any] = field(default_factory=list, repr=False)
    y_pred: list[Any] = field(default_factory=list, repr=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, task: Task, device: torch.device, amp: str = "off", max_batches: int | None = None,
             channels_last: bool = False, d: Dist = SINGLE) -> EvalResult:
    """Mean loss (and accuracy for class logits) over ``loader``, without autograd; under
    ``d`` (several ranks) over every rank's share, the same result on every rank.

    Under `compile` the loop evaluates its plain module: evaluation is a small share of a
    run, and compiling again for eval mode would add compile time that no trial measures.
    """
    model.eval()
    loss_total, samples, correct = 0.0, 0, 0
    y_true: list[Any] = []
    y_pred: list[Any] = []
    kind = ""  # "class", "regression" or "other", from the first batch on
    for inputs, target in itertools.islice(loader, max_batches):
        inputs, target = to_device(inputs, device, channels_last=channels_last), to_device(target, device)
        with knobs.autocast(device.type, amp):
            output = task.call(model, inputs)
            loss = task.loss(output, target)
        output = calling.logits_of(output)  # a ModelOutput's, a dict's or a tuple's logits
        n = batch_len(target)
        loss_total += float(loss) * n
        samples += n
        this = _kind(output, target)
        kind = this if kind in ("", this) else "other"
        if kind == "class":
            pred = output.argmax(dim=-1)
            correct += int((pred == target).sum())
            y_true.extend(target.tolist())
            y_pred.extend(pred.tolist())
        elif kind == "regression":
            y_true.extend(_rows(target))
            y_pred.extend(_rows(output))
    model.train()
    if d.active:
        loss_total, samples, correct = distributed.all_sum([loss_total, samples, correct], d, device)
        samples, correct = int(samples), int(correct)
        kinds = set(distributed.gather(kind, d)) - {""}
        kind = kinds.pop() if len(kinds) == 1 else "other"
        y_true = [y for part in distributed.gather(y_true, d) for y in part]
        y_pred = [y for part in distributed.gather(y_pred, d) for y in part]
    keep = kind in ("class", "regression")
    return EvalResult(
        loss=loss_total / max(samples, 1),
        accuracy=correct / samples if kind == "class" and samples else None,
        samples=samples,
        y_true=y_true if keep else [],
        y_pred=y_pred if keep else [],
    )


def _kind(output: Any, target: Any) -> str:
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return "other"
    if output.ndim == 2 and target.ndim == 1 and not target.is_floating_point():
        return "class"
    if (target.is_floating_point() and output.is_floating_point() and output.shape == target.shape
            and target.ndim >= 1 and target[0].numel() <= MAX_REGRESSION_WIDTH):
        return "regression"
    return "other"


def _rows(t: torch.Tensor) -> list[Any]:
    """One float a sample, or a list of floats a sample when there are several."""
    flat = t.detach().float().reshape(t.shape[0], -1).cpu()
    return flat[:, 0].tolist() if flat.shape[1] == 1 else flat.tolist()
