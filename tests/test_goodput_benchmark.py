"""The goodput A/B benchmark's bookkeeping: which arms share runs, and the pass rule."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import goodput_vs_throughput as ab  # noqa: E402
import torch  # noqa: E402

from autotune.config import TrainConfig  # noqa: E402


def test_an_arm_that_trains_as_an_earlier_one_shares_its_runs():
    base = TrainConfig(micro_batch_size=32, cpu_threads=0)
    spelled = TrainConfig(micro_batch_size=32, cpu_threads=torch.get_num_threads())
    bf16 = TrainConfig(micro_batch_size=32, cpu_threads=torch.get_num_threads(), amp="bf16")
    assert ab.same_runs({"base": base, "throughput": bf16, "goodput": spelled}) == {
        "base": "base", "throughput": "throughput", "goodput": "base"}
    assert ab.same_runs({"base": base, "throughput": bf16, "goodput": bf16}) == {
        "base": "base", "throughput": "throughput", "goodput": "throughput"}
    other_threads = TrainConfig(micro_batch_size=32, cpu_threads=torch.get_num_threads() + 1)
    assert ab.same_runs({"base": base, "throughput": other_threads, "goodput": bf16}) == {
        "base": "base", "throughput": "throughput", "goodput": "goodput"}


def test_shared_runs_compare_at_exactly_one_and_pass():
    run = {"checks": [{"samples": 64, "train_seconds": 1.0, "val_accuracy": 0.5},
                      {"samples": 128, "train_seconds": 2.0, "val_accuracy": 0.9}], "final_val_accuracy": 0.9}
    slow = {"checks": [{"samples": 64, "train_seconds": 2.0, "val_accuracy": 0.5},
                       {"samples": 128, "train_seconds": 4.0, "val_accuracy": 0.9}], "final_val_accuracy": 0.9}
    result = ab.compare({"base": [run], "throughput": [slow], "goodput": [run]}, 0.85)
    assert result["ratios"]["base"]["per_round"] == [1.0]
    assert result["ratios"]["throughput"]["per_round"] == [0.5]
    assert result["passes"]
    # Slower than BASE by any margin fails.
    result = ab.compare({"base": [run], "throughput": [slow], "goodput": [slow]}, 0.85)
    assert result["ratios"]["base"]["median"] == 2.0 and not result["passes"]
