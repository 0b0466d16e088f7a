# Items are tokenized dicts, but the target is under "target", not "labels" or "label".
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(10, 3)

    def forward(self, input_ids):
        return self.embed(input_ids)


def build_model():
    return Bag()


def build_datasets():
    items = [{"input_ids": torch.arange(4) + i, "target": torch.tensor(i % 3)} for i in range(6)]
    return items, items
