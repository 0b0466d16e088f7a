"""The validation pass: what it keeps for the report's metrics, for a classifier and for a
regression model, on real training runs of the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.model.task import load_task

ASSETS = Path(__file__).parent / "assets"
CFG = TrainConfig(micro_batch_size=8, epochs=2, lr=0.01, base_lr=0.01, warmup=0.0)


def test_a_regression_model_keeps_float_targets_and_predictions_and_no_accuracy():
    result = train(load_task(ASSETS / "tiny_regression.py"), CFG)
    ev = result.evaluation
    assert ev.accuracy is None and ev.samples == 32
    assert len(ev.y_true) == len(ev.y_pred) == 32 and all(isinstance(y, float) for y in ev.y_true + ev.y_pred)
    # The loss is the model file's MSE: the mean of the kept values' squared errors.
    assert ev.loss == pytest.approx(sum((a - b) ** 2 for a, b in zip(ev.y_true, ev.y_pred)) / 32, rel=1e-5)


def test_a_classifier_keeps_class_indices_and_its_accuracy_matches_them():
    ev = train(load_task(ASSETS / "tiny_mlp.py"), CFG).evaluation
    assert len(ev.y_true) == 32 and all(isinstance(y, int) for y in ev.y_true + ev.y_pred)
    assert ev.accuracy == sum(a == b for a, b in zip(ev.y_true, ev.y_pred)) / 32
