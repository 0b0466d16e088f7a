"""A tiny regression model on generated data, for tests: float targets and a mean squared
error loss; 96 training and 32 validation items, one target value each."""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 2, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}


def build_model():
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def build_datasets():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 4, generator=g)
    # A smooth function of the inputs plus a little noise: the model can learn most of it.
    y = (x[:, :1] * 0.8 - x[:, 1:2] ** 2 * 0.3 + 0.5 * torch.sin(x[:, 2:3])) + 0.05 * torch.randn(128, 1, generator=g)
    return TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])


def loss_fn(output, target):
    return F.mse_loss(output, target)
