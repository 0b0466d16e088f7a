"""Helpers shared by the tests of the training engine: small configs on the tiny task."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from autotune.config import Base, TrainConfig

CPU = torch.device("cpu")
# fp32 sums in a different order differ by a few ulps; 1e-6 absolute on weights of O(1).
ATOL = 1e-6


def _cfg(**kw) -> TrainConfig:
    """A config for the tiny task: lr 0.05 unscaled, one epoch, no warmup, clipping or decay."""
    base = Base(lr=0.05, batch_size=8, epochs=1, warmup=0.0, grad_clip=0.0, weight_decay=0.0, seed=3)
    kw.setdefault("lr_rule", "none")
    return TrainConfig.from_base(base, **kw)


def _weights(result) -> dict[str, torch.Tensor]:
    """A copy of a training result's weights."""
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _sgd_task(task, n_train: int | None = None):
    """The tiny task with plain SGD (so a step is -lr * grad) and an optional train size."""
    task.make_optimizer = lambda params, lr, wd: torch.optim.SGD(params, lr=lr)
    if n_train is not None:
        train_set, val_set = task.datasets()
        x, y = train_set.tensors
        task.datasets = lambda: (TensorDataset(x[:n_train], y[:n_train]), val_set)
    return task
