"""The training loop: accumulation, seeds, evaluation, checks, the meter and OOM, on real
torch with a tiny model (the knobs are tests/test_knobs.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.loop import train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom
from autotune.engine.step import NonFiniteLossError, prepare
from tests.training import ATOL, CPU, _cfg, _sgd_task, _weights


def test_accumulated_micro_batches_equal_one_large_batch(tiny_task):
    task = _sgd_task(tiny_task, 96)
    accumulated = train(task, _cfg(micro_batch_size=8, accumulation_steps=4), CPU)
    large = train(task, _cfg(micro_batch_size=32, accumulation_steps=1), CPU)
    assert accumulated.steps == large.steps == 3
    assert accumulated.samples == large.samples == 96
    for name, w in _weights(large).items():
        torch.testing.assert_close(_weights(accumulated)[name], w, atol=ATOL, rtol=0)


def test_a_short_last_group_weighs_like_one_batch_holding_it(tiny_task):
    # 40 items in micro-batches of 8, groups of 4: a whole group, then a group of one.
    task = _sgd_task(tiny_task, 40)
    cfg = _cfg(micro_batch_size=8, accumulation_steps=4)
    result = train(task, cfg, CPU)
    assert (result.steps, result.samples) == (2, 40)
    # By hand: the same start and order, one SGD step per group on the group as one batch.
    run = prepare(task, cfg, CPU, None)
    x, y = task.datasets()[0].tensors
    order = list(run.train_loader.sampler)
    for group in (order[:32], order[32:]):
        task.loss(run.module(x[group]), y[group]).backward()
        run.optimizer.step()
        run.optimizer.zero_grad()
        run.scheduler.step()
    for name, w in run.module.state_dict().items():
        torch.testing.assert_close(_weights(result)[name], w, atol=ATOL, rtol=0)


def _batch_sizes(task) -> list[int]:
    """The batch sizes the model is trained on from now on (a list that fills up)."""
    sizes: list[int] = []
    build = task.build_model

    def watched():
        model = build()
        model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])) if m.training else None)
        return model

    task.build_model = watched
    return sizes


def test_training_epochs_drop_the_short_last_micro_batch_and_count_what_they_trained(tiny_task):
    # 30 items, micro-batches of 8: three of 8 an epoch; the 6 left over are not trained
    # on in that epoch (a recompile under torch.compile, a new shape for CUDA graphs).
    task = _sgd_task(tiny_task, 30)
    sizes = _batch_sizes(task)
    result = train(task, dataclasses.replace(_cfg(micro_batch_size=8, accumulation_steps=2), epochs=2), CPU,
                   eval_each_epoch=True)
    assert sizes == [8] * 6
    assert result.samples == 48 and [row["samples"] for row in result.history] == [24, 24]
    assert result.steps == 4  # ceil(3 micro-batches / 2) an epoch: the short group is kept
    run = prepare(task, _cfg(micro_batch_size=8, accumulation_steps=2), CPU, None)
    assert (len(run.train_loader), run.steps_per_epoch) == (3, 2)
    assert result.evaluation.samples == 32  # validation loads every item, in a short last batch too


def test_a_training_set_smaller_than_a_micro_batch_trains_on_its_one_short_batch(tiny_task):
    task = _sgd_task(tiny_task, 5)
    sizes = _batch_sizes(task)
    result = train(task, dataclasses.replace(_cfg(micro_batch_size=8), epochs=3), CPU)
    assert sizes == [5, 5, 5]  # one batch an epoch, always of the same shape
    assert (result.steps, result.samples) == (3, 15)


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


def test_peak_memory_calls_initialise_cuda_before_they_read_the_allocator(monkeypatch):
    """The allocator's statistics raise "did you call init?" (reset) or read nothing
    (peak) before CUDA is initialised: both helpers initialise it first. The CUDA calls
    are recorded here, not made (tests/test_gpu_engine.py makes them in a fresh process)."""
    from autotune.engine import memory

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(f"reset {device}"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: calls.append(f"peak {device}") or 7)
    gpu = torch.device("cuda", 0)
    memory.reset_peak_memory(gpu)
    assert memory.peak_memory_bytes(gpu) == 7
    assert calls == ["init", "reset cuda:0", "init", "peak cuda:0"]
    calls.clear()
    memory.reset_peak_memory(CPU)
    assert memory.peak_memory_bytes(CPU) > 0 and calls == []  # the CPU's peak is the process's


class _Draws(torch.utils.data.Dataset):
    """Items that are the random numbers torch, numpy and python draw where they are loaded."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        import random

        import numpy as np

        return torch.tensor([torch.rand(()).item(), float(np.random.rand()), random.random()]), i


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of this process alone, so that ``prepare`` can wrap the model in DDP
    while the test plays each rank in turn."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ranks_share_the_weights_and_the_order_but_draw_their_own_random_numbers(tiny_task, one_process_group):
    from autotune.engine.distributed import SINGLE, Dist

    tiny_task.datasets = lambda: (_Draws(), _Draws())
    cfg = _cfg(micro_batch_size=4, num_workers=1)
    seen = {}
    for name, d in (("single", SINGLE), ("rank 0", Dist(0, 2)), ("rank 1", Dist(1, 2))):
        run = prepare(tiny_task, cfg, CPU, None, d=d)
        dropout = torch.rand(4)  # what dropout would draw in the first step
        items, labels = zip(*run.train_loader)  # one epoch through a worker process
        seen[name] = (run.module.state_dict(), torch.cat(labels).tolist(), dropout, torch.cat(items))
    (w0, order0, drop0, items0), (w1, order1, drop1, items1) = seen["rank 0"], seen["rank 1"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the same initial weights
    shared = torch.randperm(16, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    assert (order0, order1) == (shared[0::2], shared[1::2])  # shards of one shared order
    assert not torch.equal(drop0, drop1)  # dropout masks of their own
    for column, what in enumerate(("torch", "numpy", "python")):  # and the workers' streams
        assert not torch.equal(items0[:, column], items1[:, column]), what
    # Rank 0 goes on as a single process does.
    assert torch.equal(seen["single"][2], drop0) and torch.equal(seen["single"][3][:8], items0[:8])
