"""Model files for the tests of autotune.model.task: a valid one to extend, and how to expect
a contract error by its words."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from autotune.errors import ModelFileError
from autotune.model.task import load_task

# A valid model file; tests append code to it, and a later `def` replaces an earlier one.
GOOD = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

CALLS = []


def build_model():
    return nn.Linear(4, 3)


def build_datasets():
    CALLS.append(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    return TensorDataset(x, y), TensorDataset(x[:2], y[:2])
"""


def write(tmp_path: Path, body: str = "", *, base: str = GOOD, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(base) + textwrap.dedent(body))
    return path.resolve()


def fails(path: Path, text: str, *, validate: bool = True) -> ModelFileError:
    """Load ``path`` expecting a ModelFileError whose message starts with ``text``
    ({path} in ``text`` is replaced by the file's path)."""
    with pytest.raises(ModelFileError, match="^" + re.escape(text.format(path=path))) as info:
        load_task(path, validate=validate)
    return info.value


def line_of(path: Path, snippet: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if snippet in line)
