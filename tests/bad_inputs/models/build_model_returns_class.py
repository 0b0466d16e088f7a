# build_model returns the class, not an instance.
import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Linear):
    def __init__(self):
        super().__init__(4, 3)


def build_model():
    return Net


def build_datasets():
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    return TensorDataset(x, y), TensorDataset(x, y)
