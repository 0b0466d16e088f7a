"""Shared test fixtures: small real model files, one torch thread for steady timing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"

torch.set_num_threads(1)


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    """A copy of tests/assets/tiny_mlp.py in a temporary folder."""
    path = tmp_path / "tiny_mlp.py"
    shutil.copy(ASSETS / "tiny_mlp.py", path)
    return path


@pytest.fixture
def tiny_task(tiny_model_file: Path):
    from autotune.task import load_task

    return load_task(tiny_model_file)
