"""A tiny classifier that fails on purpose, chosen by the micro-batch its forward sees
(96 training items, so every micro-batch size below divides it and no short last batch
takes another size), and in its dataset when items are loaded by DataLoader workers.

    8  : trains normally
    12 : the loss becomes infinite (outputs of 1e38, squared)
    16 : the process aborts (os.abort(): SIGABRT, as a crash in native code would)
    24 : hangs (sleeps far past any trial timeout)
    32 : allocates 8 GiB at once: out of memory under a memory cap
    workers > 0 : the dataset raises in the worker process
"""

import os
import time

import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 1, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}


class Faulty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        n = x.shape[0]
        if n == 12:
            return self.fc(x) * 1e38 * 1e38
        if n == 16:
            os.abort()
        if n == 24:
            time.sleep(3600)
        if n == 32:
            big = torch.empty(8 * 2**30, dtype=torch.uint8)
            big.fill_(1)
        return self.fc(x)


class Items(Dataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if get_worker_info() is not None:
            raise ValueError(f"item {i} cannot be read in a worker")
        return self.x[i], self.y[i]


def build_model():
    return Faulty()


def build_datasets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(104, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return Items(x[:96], y[:96]), Items(x[96:], y[96:])
