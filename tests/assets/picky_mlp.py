"""The tiny model, but its forward pass fails on micro-batches of 16: a user bug that only
some configs hit, for tests of how the study records failed trials."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny_mlp import BASE, build_datasets  # noqa: E402,F401
from tiny_mlp import build_model as _tiny  # noqa: E402


class Picky(type(_tiny())):
    def forward(self, x):
        if x.shape[0] == 16:
            raise ValueError("this model cannot take 16 rows")
        return super().forward(x)


def build_model():
    return Picky()
