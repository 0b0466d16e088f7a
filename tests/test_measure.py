"""Trial measurements beyond samples/s: the share of time spent waiting for data, fp16's
skipped steps, and memory over the budget as an Optuna constraint."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.engine.measure import ThroughputMeter
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import run_isolated

ASSETS = Path(__file__).parent / "assets"


def test_meter_counts_the_wait_inside_timed_windows_only(monkeypatch):
    """On a fake clock each step waits 4 ms for data and computes 4 ms, so the wait is half
    of every window whatever else runs on the machine."""
    from types import SimpleNamespace

    from autotune.engine import measure as measuring

    now = [0.0]
    monkeypatch.setattr(measuring, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    meter = ThroughputMeter(warmup_steps=2, window_s=0.03, windows=2)
    meter.waited(5.0)  # before any window: not counted
    while not meter.done:
        now[0] += 0.004
        meter.waited(0.004)
        now[0] += 0.004  # the step itself
        meter.step(8)
    assert meter.summary()["data_wait_fraction"] == pytest.approx(0.5, abs=0.01)


class SlowItems(Dataset):
    """Wraps a dataset; every item takes ``delay`` seconds to load."""

    def __init__(self, inner: Dataset, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.inner[i]


def test_the_loop_reports_how_long_it_waited_for_data(tiny_task):
    # 2 ms of sleep per item, 8 items a step, against a tiny model's step: most of the
    # timed time is waiting. Without it the wait is the indexing and collating alone,
    # which for a model this small is still a good share, by how much depending on the
    # machine's load: so it is compared with the slow run (16 ms more a step), not a constant.
    def wait_fraction(delay: float | None) -> float:
        train_set, val_set = tiny_task.datasets()
        task = dataclasses.replace(tiny_task)
        task._datasets = (SlowItems(train_set, delay) if delay else train_set, val_set)
        meter = ThroughputMeter(warmup_steps=1, window_s=0.05, windows=2)
        result = train(task, TrainConfig(micro_batch_size=8, epochs=50, cpu_threads=1), torch.device("cpu"), meter=meter,
                       max_steps=200)
        return result.throughput["data_wait_fraction"]

    slow, fast = wait_fraction(0.002), wait_fraction(None)
    assert 0.6 <= slow <= 1.0 and 0.0 <= fast < slow


@pytest.mark.slow
def test_a_skipped_step_storm_under_fp16_fails_the_trial(tmp_path):
    for name in ("tiny_mlp.py", "overflow_mlp.py"):
        shutil.copy(ASSETS / name, tmp_path / name)
    budget = TrialBudget(warmup_steps=1, window_s=10.0, windows=1, max_steps=24, max_eval_batches=1)

    def trial(amp: str):
        config = TrainConfig(micro_batch_size=8, amp=amp).to_dict()
        return run_isolated(measure, {"model_path": str(tmp_path / "overflow_mlp.py"), "config": config,
                                      "budget": budget.to_dict()}, 120)

    bad = trial("fp16")
    assert bad.status == "error"
    assert "fp16 loss scaling skipped 24 of 24 optimizer steps" in bad.reason
    # The same model in fp32 has no scaler: its loss is huge but finite, so the trial
    # ends without the error.
    assert "skipped" not in trial("off").reason
