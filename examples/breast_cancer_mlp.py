"""A tabular MLP on scikit-learn's bundled breast cancer data (569 rows, 30 features).

A non-image model: inputs are feature vectors, standardised with statistics of the
training split only. Try it:

    autotune run examples/breast_cancer_mlp.py --trials 8
"""

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

BASE = {"lr": 1e-3, "batch_size": 16, "epochs": 30, "weight_decay": 1e-4, "warmup": 0.05, "seed": 0}
CLASS_NAMES = ["malignant", "benign"]


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def build_model() -> nn.Module:
    width = 64
    return nn.Sequential(
        nn.Linear(30, width),
        *[ResidualMLPBlock(width) for _ in range(3)],
        nn.LayerNorm(width),
        nn.Linear(width, 2),
    )


def build_datasets():
    data = load_breast_cancer()
    x_train, x_val, y_train, y_val = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8

    def tensors(x, y):
        return TensorDataset(
            torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        )

    return tensors(x_train, y_train), tensors(x_val, y_val)
