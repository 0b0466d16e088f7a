"""A tiny convolutional classifier on generated 2-channel 6x6 images, for tests of the
channels_last knob: 32 training and 8 validation items."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 1, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}


def build_model():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def build_datasets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, 6, 6, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, 1].mean(dim=(1, 2)) > 0.2).long()
    return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
