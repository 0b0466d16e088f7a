"""The training loop: accumulation, seeds, evaluation, checks, the meter and OOM, on real
torch with a tiny model (the knobs are tests/test_knobs.py)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom
from autotune.engine.step import NonFiniteLossError
from tests.training import ATOL, CPU, _cfg, _sgd_task, _weights


@pytest.mark.parametrize("n_train", [96, 40, 30])
def test_accumulated_micro_batches_equal_one_large_batch(tiny_task, n_train):
    # 96: whole groups; 40: a short last group (4 micro-batches then 1);
    # 30: a short last micro-batch inside the group (8+8+8+6).
    task = _sgd_task(tiny_task, n_train)
    accumulated = train(task, _cfg(micro_batch_size=8, accumulation_steps=4), CPU)
    large = train(task, _cfg(micro_batch_size=32, accumulation_steps=1), CPU)
    assert accumulated.steps == large.steps == math.ceil(n_train / 32)
    assert accumulated.samples == large.samples == n_train
    for name, w in _weights(large).items():
        torch.testing.assert_close(_weights(accumulated)[name], w, atol=ATOL, rtol=0)


def test_accumulation_test_would_notice_unnormalised_loss(tiny_task):
    # The same comparison fails when the group is weighted wrongly (lr x4 ~ loss not / k).
    task = _sgd_task(tiny_task)
    accumulated = train(task, _cfg(micro_batch_size=8, accumulation_steps=4), CPU)
    wrong = train(task, dataclasses.replace(_cfg(micro_batch_size=32), lr=0.2), CPU)
    diffs = [(_weights(accumulated)[k] - v).abs().max().item() for k, v in _weights(wrong).items()]
    assert max(diffs) > 1e-3


def test_same_seed_same_result_and_different_seed_differs(tiny_task):
    a = train(tiny_task, _cfg(micro_batch_size=8), CPU)
    b = train(tiny_task, _cfg(micro_batch_size=8), CPU)
    c = train(tiny_task, dataclasses.replace(_cfg(micro_batch_size=8), seed=4), CPU)
    torch.testing.assert_close(_weights(a)["out.weight"], _weights(b)["out.weight"], atol=0, rtol=0)
    assert not torch.equal(_weights(a)["out.weight"], _weights(c)["out.weight"])


def test_evaluation_and_history(tiny_task):
    result = train(tiny_task, dataclasses.replace(_cfg(micro_batch_size=8), epochs=3), CPU, eval_each_epoch=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(0 <= row["val_accuracy"] <= 1 for row in result.history)
    ev = result.evaluation
    assert ev.samples == 32 and len(ev.y_true) == len(ev.y_pred) == 32
    assert ev.accuracy == pytest.approx(sum(t == p for t, p in zip(ev.y_true, ev.y_pred)) / 32)
    assert result.stopped_by == "epochs"


def test_workers_load_the_same_data(tiny_task):
    a = train(tiny_task, _cfg(micro_batch_size=8), CPU)
    b = train(tiny_task, _cfg(micro_batch_size=8, num_workers=1, persistent_workers=True), CPU)
    torch.testing.assert_close(_weights(a)["out.weight"], _weights(b)["out.weight"], atol=ATOL, rtol=0)


def test_non_finite_loss_is_an_error(tiny_task):
    tiny_task.loss = lambda out, target: out.sum() * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"training loss became nan at optimizer step \d+"):
        train(tiny_task, _cfg(micro_batch_size=8), CPU)


def test_meter_ends_a_trial(tiny_task):
    meter = ThroughputMeter(warmup_steps=2, window_s=0.01, windows=3)
    result = train(tiny_task, dataclasses.replace(_cfg(micro_batch_size=8), epochs=10**6), CPU, meter=meter, max_steps=10_000)
    assert result.stopped_by == "meter"
    summary = meter.summary()
    assert summary["windows"] == 3
    assert summary["throughput_min_samples_per_s"] <= summary["throughput_samples_per_s"] <= summary["throughput_max_samples_per_s"]


def test_meter_excludes_warmup_steps():
    meter = ThroughputMeter(warmup_steps=3, window_s=0.0, windows=2)
    for _ in range(3):
        meter.step(100)
    assert meter.rates == []
    meter.step(100)
    meter.step(100)
    assert len(meter.rates) == 2 and meter.done


def test_is_oom_predicate():
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x6 and 5x16)"))
    assert not is_oom(ValueError("out of memory"))


def test_real_cpu_allocation_failure_is_oom():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(info.value)


def test_a_short_runs_evaluation_loads_in_process_and_a_full_runs_with_the_workers(tiny_task):
    from autotune.engine.step import prepare

    cfg = TrainConfig.from_base(tiny_task.base, num_workers=2, persistent_workers=True)
    short = prepare(tiny_task, cfg, torch.device("cpu"), max_steps=4, eval_in_process=True)
    full = prepare(tiny_task, cfg, torch.device("cpu"), max_steps=None)
    assert (short.train_loader.num_workers, short.val_loader.num_workers) == (2, 0)
    assert (full.train_loader.num_workers, full.val_loader.num_workers) == (2, 2)


def test_checks_evaluate_every_so_many_samples_off_the_runs_clock(tiny_task):
    """Evaluation is made slow (each validation forward sleeps): the checks' training
    times and the epochs' rows leave it out, the run's wall time does not."""
    build = tiny_task.build_model
    slept = []

    def slow_to_evaluate():
        model = build()
        forward = model.forward

        def timed(*args, **kwargs):
            if not torch.is_grad_enabled():
                time.sleep(0.02)
                slept.append(0.02)
            return forward(*args, **kwargs)

        model.forward = timed
        return model

    tiny_task.build_model = slow_to_evaluate
    train_size = len(tiny_task.datasets()[0])
    began = time.perf_counter()
    result = train(tiny_task, dataclasses.replace(_cfg(micro_batch_size=8), epochs=2), CPU, eval_each_epoch=True,
                   eval_every_samples=train_size // 2)
    wall = time.perf_counter() - began
    assert [c["samples"] for c in result.checks] == [train_size // 2 * k for k in (1, 2, 3, 4)]
    assert all(0 <= c["val_accuracy"] <= 1 for c in result.checks)
    # The check at an epoch's end sees what that epoch's evaluation sees.
    assert result.checks[1]["val_loss"] == pytest.approx(result.history[0]["val_loss"])
    assert result.checks[3]["val_loss"] == pytest.approx(result.history[1]["val_loss"])
    times = [c["train_seconds"] for c in result.checks]
    assert times == sorted(times)
    trained = sum(row["seconds"] for row in result.history)
    assert times[-1] == pytest.approx(trained, abs=0.01)
    # Every evaluation (four checks, two epoch ends, the final one) is outside it.
    assert wall - trained >= sum(slept)
    with pytest.raises(ValueError, match="eval_every_samples"):
        train(tiny_task, _cfg(micro_batch_size=8), CPU, eval_every_samples=0)
