# forward returns a dict of strings: nothing the default cross-entropy could use as logits.
import torch
from torch import nn
from torch.utils.data import TensorDataset


class Describer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"summary": "three classes"}


def build_model():
    return Describer()


def build_datasets():
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    return TensorDataset(x, y), TensorDataset(x, y)
