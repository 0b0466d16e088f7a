"""The bundled example model files: each meets the model-file contract, builds the same
data every time, and trains a few steps with a finite loss."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.model.task import load_task

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_the_examples_the_readme_lists_are_there():
    listed = set(re.findall(r"`examples/(\w+)\.py`", (Path(__file__).parents[1] / "README.md").read_text()))
    assert {p.stem for p in EXAMPLES} == listed >= {"digits_cnn", "breast_cancer_mlp", "sequence_transformer",
                                                     "hf_text_classifier", "image_folder"}


@pytest.fixture(autouse=True)
def example_cache(tmp_path_factory, monkeypatch):
    """Examples that write files on first use (examples/image_folder.py) write them under
    a temporary folder shared by this session's tests, never under ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "example_cache"
    monkeypatch.setenv("AUTOTUNE_EXAMPLE_CACHE", str(folder))
    return folder


def _first_items(dataset, count: int = 16) -> list:
    """The first items of ``dataset``, read after seeding numpy's and torch's global
    generators: a dataset that augments at random in ``__getitem__`` (as image pipelines
    do, drawing from the global generators that DataLoader workers seed) then gives the
    same items from the same seed. So equal items mean equal stored data and augmentation
    drawn only from those generators; the augmentation itself is checked apart."""
    np.random.seed(0)
    torch.manual_seed(0)
    return [dataset[i] for i in range(min(count, len(dataset)))]


def _same(x, y) -> bool:
    """Items are pairs of tensors or numbers, or dicts holding tensors."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (tuple, list)):
        return isinstance(y, (tuple, list)) and len(x) == len(y) and all(map(_same, x, y))
    return x == y


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_meets_the_contract_and_trains(path):
    if path.stem == "hf_text_classifier":
        pytest.importorskip("transformers", reason="the Hugging Face example needs transformers")
    task = load_task(path)  # validates: builds model and data, runs one forward and loss
    first, again = task.datasets(), load_task(path, validate=False).datasets()
    for a, b in zip(first, again):
        assert len(a) == len(b)
        assert all(map(_same, _first_items(a), _first_items(b)))
    result = train(task, TrainConfig.from_base(task.base, epochs=1), max_steps=3, max_eval_batches=1)
    assert result.steps == 3 and math.isfinite(result.train_loss)
    assert result.evaluation.accuracy is not None


def test_image_folder_writes_its_cache_once_and_decodes_items(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_EXAMPLE_CACHE", str(tmp_path))
    task = load_task(Path(__file__).parents[1] / "examples" / "image_folder.py", validate=False)
    train, val = task.datasets()
    root = tmp_path / "image_folder"
    pngs = {split: sorted((root / split).glob("*/*.png")) for split in ("train", "val")}
    assert (len(pngs["train"]), len(pngs["val"])) == (len(train), len(val)) == (1500, 300)
    assert {p.parent.name for p in pngs["train"]} == set(task.class_names)
    assert [p.name for p in tmp_path.iterdir()] == ["image_folder"]  # no staging folder left
    written = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}

    train, val = task.datasets()  # a complete cache is reused, not written again
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")} == written

    for dataset in (train, val):
        for i in (0, len(dataset) // 2, len(dataset) - 1):
            image, label = dataset[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            assert isinstance(label, int) and 0 <= label < len(task.class_names)
    # Validation items are fixed; training items are augmented afresh at each read.
    assert torch.equal(val[0][0], val[0][0])
    np.random.seed(0)
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
