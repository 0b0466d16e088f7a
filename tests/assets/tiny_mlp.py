"""A tiny classifier on generated data, for tests: 96 training and 32 validation items."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 2, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}
CLASS_NAMES = ["a", "b", "c"]


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.Tanh()

    def forward(self, x):
        return x + self.act(self.fc(x))


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blocks = nn.ModuleList(Block(16) for _ in range(2))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def build_model():
    return TinyMLP()


def build_datasets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])
