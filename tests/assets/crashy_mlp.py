"""A small classifier with dropout whose training data can kill its own process, for the
resume tests: with CRASHY_MLP_KILL_AT=N in the environment, fetching the N-th training
item (counted from 1, in this process) sends SIGKILL to the process, as a crash or an
out-of-memory kill would, with no chance to clean up."""

import os
import signal

import torch
from torch import nn
from torch.utils.data import Dataset

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 3, "warmup": 0.2, "grad_clip": 1.0, "seed": 3}


class KillingDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, kill_at: int | None) -> None:
        self.x, self.y, self.kill_at, self.fetched = x, y, kill_at, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.fetched += 1
        if self.kill_at is not None and self.fetched >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.x[i], self.y[i]


def build_model():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


def build_datasets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    kill_at = os.environ.get("CRASHY_MLP_KILL_AT")
    train = KillingDataset(x[:96], y[:96], int(kill_at) if kill_at else None)
    return train, torch.utils.data.TensorDataset(x[96:], y[96:])
