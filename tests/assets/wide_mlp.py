"""A wide MLP whose memory grows quickly with the batch, for tests under a real memory cap."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

BASE = {"lr": 0.01, "batch_size": 16, "epochs": 1, "seed": 0}


def build_model():
    return nn.Sequential(nn.Linear(256, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 4))


def build_datasets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 256, generator=g)
    y = torch.randint(0, 4, (160,), generator=g)
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])
