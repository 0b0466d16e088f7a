"""A small CNN on scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download).

A plain PyTorch model file: it never imports autotune. Try it:

    autotune run examples/digits_cnn.py --trials 8
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

# Reference hyperparameters: `lr` was chosen for an effective batch of `batch_size`.
BASE = {"lr": 2e-3, "batch_size": 32, "epochs": 20, "weight_decay": 1e-4, "warmup": 0.05, "seed": 0}
CLASS_NAMES = [str(d) for d in range(10)]


class ConvBlock(nn.Module):
    """conv -> batch norm -> GELU, keeping the spatial size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(channels) for _ in range(depth))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_model() -> nn.Module:
    return DigitsCNN()


def build_datasets():
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        range(len(labels)), test_size=0.2, random_state=0, stratify=digits.target
    )
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[val_idx], labels[val_idx]),
    )
