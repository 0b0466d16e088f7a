# The validation split is empty.
import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model():
    return nn.Linear(4, 3)


def build_datasets():
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    return TensorDataset(x, y), TensorDataset(x[:0], y[:0])
