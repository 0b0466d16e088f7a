"""The training loop and its knobs, on real torch with a tiny model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from autotune.config import Base, TrainConfig, scaled_lr
from autotune.engine import knobs
from autotune.engine.loop import NonFiniteLossError, train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom

CPU = torch.device("cpu")
# fp32 sums in a different order differ by a few ulps; 1e-6 absolute on weights of O(1).
ATOL = 1e-6


def _cfg(**kw) -> TrainConfig:
    base = Base(lr=0.05, batch_size=8, epochs=1, warmup=0.0, grad_clip=0.0, weight_decay=0.0, seed=3)
    kw.setdefault("lr_rule", "none")
    return TrainConfig.from_base(base, **kw)


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _sgd_task(task, n_train: int | None = None):
    """The tiny task with plain SGD (so a step is -lr * grad) and an optional train size."""
    task.make_optimizer = lambda params, lr, wd: torch.optim.SGD(params, lr=lr)
    if n_train is not None:
        train_set, val_set = task.datasets()
        x, y = train_set.tensors
        task.datasets = lambda: (TensorDataset(x[:n_train], y[:n_train]), val_set)
    return task


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


def test_checkpointing_gives_the_same_weights(tiny_task):
    task = _sgd_task(tiny_task)
    plain = train(task, _cfg(micro_batch_size=16), CPU)
    ckpt = train(task, _cfg(micro_batch_size=16, checkpointing=True), CPU)
    for name, w in _weights(plain).items():
        torch.testing.assert_close(_weights(ckpt)[name], w, atol=ATOL, rtol=0)


def test_checkpointing_wraps_the_blocks_in_backward(tiny_task):
    model = tiny_task.build_model()
    knobs.enable_checkpointing(tiny_task.blocks(model))
    calls = []
    model.blocks[0].fc.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    loss = model(torch.randn(4, 6)).sum()
    loss.backward()
    # Forward once, then recomputed once in backward.
    assert len(calls) == 2


def test_checkpointing_with_dropout_keeps_the_rng():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))
    reference.load_state_dict(block.state_dict())
    knobs.enable_checkpointing([block])
    x = torch.randn(16, 8)
    torch.manual_seed(1)
    block(x).sum().backward()
    torch.manual_seed(1)
    reference(x).sum().backward()
    torch.testing.assert_close(block[0].weight.grad, reference[0].weight.grad)


@pytest.mark.parametrize(
    "rule, expected",
    [("linear", 0.01 * 8), ("sqrt", 0.01 * math.sqrt(8)), ("none", 0.01)],
)
def test_lr_rules(rule, expected):
    assert scaled_lr(0.01, 32, 256, rule) == pytest.approx(expected)
    cfg = TrainConfig.from_base(Base(lr=0.01, batch_size=32), micro_batch_size=64, accumulation_steps=4, lr_rule=rule)
    assert cfg.lr == pytest.approx(expected)


def test_warmup_then_cosine_values():
    # 10 steps, 4 of warmup: 0.25, 0.5, 0.75, 1.0, then cosine from 1 towards 0 over the
    # remaining 6 steps (0 would be reached at step 10, one past the last).
    got = [knobs.lr_factor(s, 4, 10) for s in range(10)]
    cos = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0] + cos)
    assert cos[-1] == pytest.approx(0.0670, abs=1e-4)
    assert knobs.lr_factor(0, 0, 10) == 1.0
    assert knobs.warmup_steps_for(0.05, 200) == 10


def test_the_loop_follows_the_schedule(tiny_task):
    task = _sgd_task(tiny_task)
    cfg = dataclasses.replace(_cfg(micro_batch_size=8), warmup=0.25, epochs=2)
    seen: list[float] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    task.make_optimizer = lambda params, lr, wd: RecordingSGD(params, lr=lr)
    result = train(task, cfg, CPU)
    total = result.steps  # 12 per epoch x 2
    assert total == 24
    warm = knobs.warmup_steps_for(0.25, total)
    assert seen == pytest.approx([cfg.lr * knobs.lr_factor(s, warm, total) for s in range(total)])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs_a_step_on_the_cpu(tiny_task, amp):
    result = train(tiny_task, _cfg(micro_batch_size=16, amp=amp), CPU, max_steps=2)
    assert result.steps == 2
    assert math.isfinite(result.train_loss)
    assert knobs.grad_scaler("cpu", amp).is_enabled() == (amp == "fp16")


def test_autocast_really_changes_the_dtype():
    with knobs.autocast("cpu", "bf16"):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with knobs.autocast("cpu", "off"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


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
