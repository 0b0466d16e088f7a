"""The bundled example model files: each meets the model-file contract, builds the same
data every time, and trains a few steps with a finite loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.task import load_task

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_there_are_examples_of_three_kinds():
    assert {p.stem for p in EXAMPLES} >= {"digits_cnn", "breast_cancer_mlp", "sequence_transformer"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_meets_the_contract_and_trains(path):
    task = load_task(path)  # validates: builds model and data, runs one forward and loss
    first, again = task.datasets(), load_task(path, validate=False).datasets()
    for a, b in zip(first, again):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a[:16], b[:16]))
    result = train(task, TrainConfig.from_base(task.base, epochs=1), max_steps=3, max_eval_batches=1)
    assert result.steps == 3 and math.isfinite(result.train_loss)
    assert result.evaluation.accuracy is not None
