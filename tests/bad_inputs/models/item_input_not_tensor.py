# Items hold plain Python lists as the input.
import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model():
    return nn.Linear(4, 3)


class ListDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return [0.0, 1.0, 2.0, 3.0], i % 3


def build_datasets():
    return ListDataset(), ListDataset()
