"""A small Transformer encoder classifying generated token sequences (no download).

Each sequence holds 32 tokens from a vocabulary of 16; tokens 1 to 4 are markers, and the
class is the marker that occurs most often. The data are generated from a fixed seed, so
every run sees the same 3,000 training and 800 validation sequences. Try it:

    autotune run examples/sequence_transformer.py --trials 8
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

BASE = {"lr": 1e-3, "batch_size": 32, "epochs": 10, "weight_decay": 1e-2, "warmup": 0.05, "seed": 0}
CLASS_NAMES = ["marker 1", "marker 2", "marker 3", "marker 4"]

VOCAB, LENGTH, WIDTH = 16, 32, 64
MARKERS = (1, 2, 3, 4)


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual connection."""

    def __init__(self, width: int, heads: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class SequenceClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(torch.zeros(LENGTH, WIDTH))
        self.blocks = nn.ModuleList(EncoderBlock(WIDTH) for _ in range(2))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, len(MARKERS))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def build_model() -> nn.Module:
    return SequenceClassifier()


def _generate(n: int, generator: torch.Generator) -> TensorDataset:
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    target = torch.randint(0, len(MARKERS), (n,), generator=generator)
    # Plant 1 to 3 extra copies of the class's marker at random places.
    extra = torch.randint(1, 4, (n,), generator=generator)
    places = torch.rand(n, LENGTH, generator=generator).argsort(dim=1)
    for i in range(n):
        tokens[i, places[i, : extra[i]]] = MARKERS[target[i]]
    counts = torch.stack([(tokens == m).sum(dim=1) for m in MARKERS], dim=1)
    return TensorDataset(tokens, counts.argmax(dim=1))  # the label is what the data say


def build_datasets():
    generator = torch.Generator().manual_seed(1234)
    return _generate(3000, generator), _generate(800, generator)
