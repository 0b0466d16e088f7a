"""Models as people write them, through `autotune run`: a forward that takes a dict batch
whole, and a Hugging Face model fed dict items that hold their `labels`. Each run must
end with the full evaluation (accuracy, classification report, confusion matrix) and a
report that says how the model was called."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autotune.workflow import pipeline
from autotune.search import SearchBudget, TrialBudget

ROOT = Path(__file__).parents[1]
ASSETS = ROOT / "tests" / "assets"
FAST_TRIAL = TrialBudget(warmup_steps=1, window_s=0.05, windows=2, max_eval_batches=2, timeout_s=120)


def _run(model: Path, out: Path) -> dict:
    options = pipeline.RunOptions(out=out, space=str(ASSETS / "tiny_space.yaml"),
                                  budget=SearchBudget(n_trials=2, trial=FAST_TRIAL), progress=False)
    pipeline.run(model, options, log=lambda line: None)
    return json.loads((out / "report.json").read_text())


def _assert_full_evaluation(report: dict, labels: list[str], samples: int, out: Path) -> None:
    evaluation = report["evaluation"]
    assert evaluation["kind"] == "classification" and evaluation["labels"] == labels
    assert 0 <= evaluation["accuracy"] <= 1 and report["final"]["val_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert sum(map(sum, evaluation["confusion_matrix"])) == samples
    assert set(labels) <= set(evaluation["report"])  # classification_report, one row a class
    markdown = (out / "report.md").read_text()
    assert "classification_report" in markdown and "Confusion matrix" in markdown


@pytest.mark.slow
def test_a_forward_taking_the_dict_batch_whole_goes_through_run(tmp_path):
    model = tmp_path / "dict_forward.py"
    shutil.copy(ASSETS / "dict_forward.py", model)
    report = _run(model, tmp_path / "run")
    assert report["model"]["calling"] == "model(batch)"
    assert report["model"]["target"] == "each item's second element"
    _assert_full_evaluation(report, ["skip", "click"], 32, tmp_path / "run")
    assert "The model is called as `model(batch)`" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_a_hugging_face_model_with_labels_in_its_items_goes_through_run(tmp_path):
    pytest.importorskip("transformers", reason="the Hugging Face example needs transformers")
    model = tmp_path / "hf_text_classifier.py"
    # The bundled example, one epoch for the final run.
    model.write_text((ROOT / "examples" / "hf_text_classifier.py").read_text() + '\nBASE = {**BASE, "epochs": 1}\n')
    report = _run(model, tmp_path / "run")
    assert report["model"]["calling"] == "model(**batch)"
    assert report["model"]["target"] == "each item's 'labels'"
    _assert_full_evaluation(report, ["negative", "positive"], 500, tmp_path / "run")
    assert report["evaluation"]["accuracy"] > 0.6  # one epoch learns the task, logits read from the ModelOutput


DATASETS_MODEL = '''
import torch
from torch import nn
from datasets import Dataset

CLASS_NAMES = ["even", "odd"]


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(16, 2, mode="sum")

    def forward(self, input_ids, attention_mask):
        return self.embed(input_ids, per_sample_weights=attention_mask.float())


def _split(n, offset):
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(offset, offset + n):
        rows["input_ids"].append([i % 16, (i * 3) % 16, (i * 5) % 16, 0])
        rows["attention_mask"].append([1, 1, 1, 0])
        rows["labels"].append(i % 2)
    data = Dataset.from_dict(rows)
    data.set_format("torch")
    return data


def build_model():
    return Bag()


def build_datasets():
    return _split(64, 0), _split(16, 64)
'''


def test_a_tokenized_hugging_face_dataset_works_as_it_is(tmp_path):
    """A `datasets.Dataset` after `set_format("torch")`: dict items with `labels`, batched
    by the DataLoader (in a worker process too), the target taken out, the model called by
    name."""
    pytest.importorskip("datasets", reason="needs the Hugging Face datasets library")
    from autotune.config import TrainConfig
    from autotune.engine.loop import train
    from autotune.model.task import load_task

    path = tmp_path / "tokenized.py"
    path.write_text(DATASETS_MODEL)
    task = load_task(path)
    assert task.calling == "model(**batch)" and task.target_source == "each item's 'labels'"
    result = train(task, TrainConfig(micro_batch_size=8, epochs=1, num_workers=1, lr=0.1, base_lr=0.1))
    assert result.steps == 8 and result.evaluation.samples == 16 and result.evaluation.accuracy is not None
