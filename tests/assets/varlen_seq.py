"""Sequences of different lengths, padded per batch, with the longest items last: a probe
that took the first items would see only short ones. Memory grows with batch x length."""

import torch
from torch import nn
from torch.utils.data import Dataset

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 1, "seed": 0}
SHORT, LONG = 8, 1024  # token counts; the last LONG_ITEMS items are LONG
ITEMS, LONG_ITEMS = 96, 8


class Sequences(Dataset):
    def __init__(self, n: int, long_items: int) -> None:
        self.n, self.long_items = n, long_items

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        length = LONG if i >= self.n - self.long_items else SHORT
        g = torch.Generator().manual_seed(i)
        return torch.randint(1, 100, (length,), generator=g), i % 3


def collate_fn(items):
    tokens = nn.utils.rnn.pad_sequence([t for t, _ in items], batch_first=True)
    return tokens, torch.tensor([y for _, y in items])


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 256)
        self.mix = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
        self.head = nn.Linear(256, 3)

    def forward(self, tokens):
        return self.head(self.mix(self.embed(tokens)).mean(dim=1))


def build_model():
    return Pooled()


def build_datasets():
    return Sequences(ITEMS, LONG_ITEMS), Sequences(24, 2)
