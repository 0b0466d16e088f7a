"""The final run's accounting: where its wall time went (``engine.loop.Ledger``) and how its
training steps compare with what the search measured (``run_data.accounting``)."""

from __future__ import annotations

import dataclasses

import pytest

from autotune.config import TrainConfig
from autotune.engine.checkpoint import Checkpointer
from autotune.engine.evaluation import EvalResult
from autotune.engine.loop import TrainResult, train
from autotune.hardware import usable_cores
from autotune.workflow.run_data import GAP, accounting


def test_the_ledger_accounts_for_the_run_and_its_parts(tiny_task, tmp_path):
    cfg = TrainConfig.from_base(tiny_task.base, epochs=3, num_workers=1)
    result = train(tiny_task, cfg, eval_each_epoch=True, checkpoints=Checkpointer(tmp_path, every_steps=2))
    ledger = result.ledger
    parts = ("setup", "epoch_start", "training", "compile", "evaluation", "checkpoints")
    assert all(ledger[k] >= 0 for k in (*parts, "data_wait"))
    assert ledger["training"] > 0 and ledger["evaluation"] > 0 and ledger["checkpoints"] > 0
    assert ledger["epoch_start"] > 0  # each epoch's first fetch waits for the worker
    assert ledger["data_wait"] <= ledger["training"]
    assert sum(ledger[k] for k in parts) <= ledger["total"]
    assert ledger["samples"] == result.samples == 3 * 96  # 96 items, micro-batch 8: no short batch
    # What the epochs' rows time is the training, the epoch starts and the checkpoints in them.
    assert sum(r["seconds"] for r in result.history) >= ledger["training"] + ledger["epoch_start"]


def _result(training: float, data_wait: float = 0.0, config: dict | None = None) -> TrainResult:
    ledger = {"setup": 0.1, "epoch_start": 0.2, "training": training, "compile": 0.0, "evaluation": 0.5,
              "checkpoints": 0.1, "total": training + 1.0, "data_wait": data_wait, "samples": 1000}
    return TrainResult(steps=10, samples=1000, seconds=training + 0.9, stopped_by="epochs", train_loss=0.1,
                       peak_memory_bytes=0, evaluation=EvalResult(0.1, 0.9, 100), ledger=ledger,
                       config=config or {"cpu_threads": 1, "num_workers": 0})


def test_accounting_compares_the_training_steps_with_the_selection():
    a = accounting(_result(training=2.0), {"throughput_samples_per_s": 500.0})
    assert a["achieved_samples_per_s"] == pytest.approx(500.0) and a["ratio"] == pytest.approx(1.0)
    assert a["gap"] is None
    assert a["seconds"]["other"] == pytest.approx(0.1)
    assert a["end_to_end_samples_per_s"] == pytest.approx(1000 / 3.0)
    just_inside = accounting(_result(training=1000 / (500 * (1 - GAP) + 1)), {"throughput_samples_per_s": 500.0})
    assert just_inside["gap"] is None


def test_a_gap_names_its_likely_cause():
    measured = {"throughput_samples_per_s": 1000.0, "data_wait_fraction": 0.05}
    data_bound = accounting(_result(training=2.0, data_wait=1.0), measured)
    assert data_bound["ratio"] == pytest.approx(0.5)
    assert data_bound["gap"].startswith("data loading: the training steps waited for batches 50% of the time, the trials 5%")
    crowded = {"cpu_threads": usable_cores(), "num_workers": 1}
    assert accounting(_result(training=2.0, config=crowded), measured)["gap"].startswith("oversubscribed cores")
    assert "slower or busier" in accounting(_result(training=2.0), measured)["gap"]
    assert "faster or less busy" in accounting(_result(training=0.5), measured)["gap"]


def test_no_accounting_without_a_ledger():
    result = dataclasses.replace(_result(training=1.0), ledger={})
    assert accounting(result, {"throughput_samples_per_s": 1.0}) is None
