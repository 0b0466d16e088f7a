# The file defines the model but no datasets.
import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model():
    return nn.Linear(4, 3)
