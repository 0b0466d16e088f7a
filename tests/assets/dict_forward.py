"""A recommender-style model whose forward takes the batch whole, for tests: items are
({"user": ..., "item": ..., "context": ...}, label) pairs, and ``forward(self, batch)``
reads the parts it needs, so autotune must call it as ``model(batch)``."""

import torch
from torch import nn

BASE = {"lr": 0.01, "batch_size": 8, "epochs": 2, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}
CLASS_NAMES = ["skip", "click"]


class Recommender(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.users = nn.Embedding(10, 8)
        self.items = nn.Embedding(20, 8)
        self.head = nn.Sequential(nn.Linear(8 + 8 + 3, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, batch):
        parts = [self.users(batch["user"]), self.items(batch["item"]), batch["context"]]
        return self.head(torch.cat(parts, dim=1))


class Interactions(torch.utils.data.Dataset):
    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.user = torch.randint(0, 10, (n,), generator=generator)
        self.item = torch.randint(0, 20, (n,), generator=generator)
        self.context = torch.randn(n, 3, generator=generator)
        self.label = ((self.user + self.item) % 2 == 0).long() ^ (self.context[:, 0] > 1).long()

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int):
        return {"user": self.user[i], "item": self.item[i], "context": self.context[i]}, self.label[i]


def build_model():
    return Recommender()


def build_datasets():
    g = torch.Generator().manual_seed(3)
    return Interactions(96, g), Interactions(32, g)
