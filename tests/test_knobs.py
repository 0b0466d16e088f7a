"""The training knobs (checkpointing, the LR rule and schedule, threads, cudnn, channels_last,
compile, autocast), on real torch with a tiny model."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import torch

from autotune.config import Base, TrainConfig, scaled_lr
from autotune.engine import knobs
from autotune.engine.loop import train
from autotune.errors import ConfigError
from autotune.model.task import load_task
from tests.spaces import _whole
from tests.training import CPU, ATOL, _cfg, _sgd_task, _weights

ASSETS = Path(__file__).parent / "assets"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_the_loop_follows_the_schedule(tiny_task, schedule):
    task = _sgd_task(tiny_task)
    cfg = dataclasses.replace(_cfg(micro_batch_size=8), warmup=0.25, epochs=2, schedule=schedule)
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
    assert seen == pytest.approx([cfg.lr * knobs.lr_factor(s, warm, total, schedule) for s in range(total)])


def test_one_cycle_values():
    total = 100
    got = [knobs.lr_factor(s, 0, total, "onecycle") for s in range(total)]
    assert got[0] == pytest.approx(1 / 25)  # starts at the peak / 25
    assert got[29] == 1.0 == max(got)  # the peak: the last of the first 30% of the steps
    assert got[-1] == pytest.approx(1 / 25 / 1e4)  # ends at the start / 1e4
    assert all(a < b for a, b in zip(got[:29], got[1:30]))
    assert all(a > b for a, b in zip(got[29:], got[30:]))
    # cosine-shaped: halfway up (step 14.5 of 29) it is the mean of the start and the peak
    assert knobs.one_cycle(14.5, 0, total) == pytest.approx((1 / 25 + 1) / 2)
    # warmup is ignored, and the values are those of torch's OneCycleLR with its defaults
    assert [knobs.lr_factor(s, 10, total, "onecycle") for s in range(total)] == got
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=total, cycle_momentum=False)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if len(torch_lrs) < total:
            reference.step()
    assert got == pytest.approx(torch_lrs, rel=1e-12)


@pytest.mark.parametrize(
    ("train_data", "message"),
    [
        ({"schedule": "step"}, "tuned.yaml: train: `schedule` must be one of cosine, onecycle, but got 'step'."),
        ({"cpu_threads": -1}, "tuned.yaml: train: `cpu_threads` must be >= 0, but got -1."),
        ({"cpu_threads": 2.0}, "tuned.yaml: train: `cpu_threads` must be an integer, but got 2.0."),
        ({"channels_last": "yes"}, "tuned.yaml: train: `channels_last` must be true or false, but got 'yes'."),
        ({"cudnn_benchmark": 1}, "tuned.yaml: train: `cudnn_benchmark` must be true or false, but got 1."),
        ({"compile": None}, "tuned.yaml: train: `compile` must be a string, but got None."),
    ],
)
def test_the_new_knobs_are_validated(train_data, message):
    with pytest.raises(ConfigError, match=_whole(message)):
        TrainConfig.from_dict(train_data, source="tuned.yaml: train")


def _watch_forward(task, record):
    """Make ``task`` build models whose forward calls ``record(model, inputs)``."""
    build = task.build_model

    def watched():
        model = build()
        model.register_forward_pre_hook(lambda m, args: record(m, args[0]))
        return model

    task.build_model = watched
    return task


def test_cpu_threads_hold_for_the_run_and_are_restored(tiny_task):
    before = torch.get_num_threads()  # 1: tests/conftest.py sets it
    seen: list[int] = []
    _watch_forward(tiny_task, lambda m, x: seen.append(torch.get_num_threads()))
    result = train(tiny_task, _cfg(micro_batch_size=32, cpu_threads=before + 1), CPU)
    assert result.steps == 3 and len(seen) == 3 + 1  # three steps and one validation batch
    assert set(seen) == {before + 1}
    assert torch.get_num_threads() == before
    # Off (0), or on a GPU, it does nothing; an error inside restores the setting too.
    for device_type, threads in (("cpu", 0), ("cuda", before + 2)):
        with knobs.cpu_threads(device_type, threads):
            assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with knobs.cpu_threads("cpu", before + 2):
            assert torch.get_num_threads() == before + 2
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_cudnn_benchmark_holds_for_the_run_only():
    before = torch.backends.cudnn.benchmark
    with knobs.cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before
    with knobs.cudnn_benchmark(False):
        assert torch.backends.cudnn.benchmark == before


def test_channels_last_trains_a_conv_model_on_the_cpu():
    layouts: list[tuple[bool, bool]] = []
    task = _watch_forward(
        load_task(ASSETS / "tiny_cnn.py"),
        lambda m, x: layouts.append((m.training, x.is_contiguous(memory_format=torch.channels_last))),
    )
    result = train(task, _cfg(micro_batch_size=8, channels_last=True), CPU)
    assert result.steps == 4 and math.isfinite(result.train_loss)
    # every input is channels_last, in the training steps and in evaluation alike
    assert layouts == [(True, True)] * 4 + [(False, True)]
    assert result.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    layouts.clear()
    plain = train(task, _cfg(micro_batch_size=8), CPU)
    assert layouts == [(True, False)] * 4 + [(False, False)]
    for name, w in _weights(plain).items():
        torch.testing.assert_close(_weights(result)[name], w, atol=1e-5, rtol=1e-5)


def test_channels_last_moves_only_4d_floating_tensors():
    from autotune.engine.data import to_device

    batch = {"image": torch.randn(2, 3, 4, 5), "mask": torch.zeros(2, 3, 4, 5, dtype=torch.long), "v": torch.randn(2, 3)}
    moved = to_device(batch, CPU, channels_last=True)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)
    assert not moved["image"].is_contiguous()
    assert moved["mask"].is_contiguous() and moved["v"] is batch["v"]
    torch.testing.assert_close(moved["image"], batch["image"], atol=0, rtol=0)


def test_compile_clock_times_the_first_step_against_the_next_ones():
    synced: list[int] = []
    clock = knobs.CompileClock(lambda: synced.append(1), enabled=True, later=3)
    now = time.perf_counter()
    clock.step(now - 5.0)  # a first step of ~5 s, then steps of ~1 s
    for _ in range(5):
        clock.step(time.perf_counter() - 1.0)
    assert len(clock.times) == len(synced) == 4  # the later steps are no longer timed
    assert clock.seconds == pytest.approx(4.0, abs=0.05)
    off = knobs.CompileClock(lambda: synced.append(1), enabled=False)
    off.step(now - 5.0)
    assert off.seconds == 0.0 and off.times == [] and len(synced) == 4
    one = knobs.CompileClock(lambda: None, enabled=True)
    one.step(time.perf_counter() - 2.0)
    assert one.seconds == pytest.approx(2.0, abs=0.05)  # no later step: the whole first one


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_trains_counts_its_compile_time_and_saves_plain_weights(tiny_task):
    # A real torch.compile on the CPU (inductor, gcc): 10-20 s here.
    task = _sgd_task(tiny_task)
    compiled = train(task, _cfg(micro_batch_size=16, compile=True), CPU)
    plain = train(task, _cfg(micro_batch_size=16), CPU)
    assert compiled.steps == plain.steps == 6 and math.isfinite(compiled.train_loss)
    assert compiled.compile_seconds > 0 and plain.compile_seconds == 0.0
    assert type(compiled.model) is type(plain.model)  # the module, not the compiled wrapper
    keys = list(compiled.model.state_dict())
    assert keys == list(plain.model.state_dict()) and not any("_orig_mod" in k for k in keys)
    for name, w in _weights(plain).items():
        torch.testing.assert_close(_weights(compiled)[name], w, atol=1e-5, rtol=1e-5)


@needs_gpu
def test_gpu_knobs_train_a_conv_model_on_the_gpu():
    seen: list[tuple[bool, bool]] = []
    task = _watch_forward(
        load_task(ASSETS / "tiny_cnn.py"),
        lambda m, x: seen.append((x.is_contiguous(memory_format=torch.channels_last), torch.backends.cudnn.benchmark)),
    )
    before = torch.backends.cudnn.benchmark
    cfg = _cfg(micro_batch_size=8, channels_last=True, cudnn_benchmark=True, cpu_threads=1)
    result = train(task, cfg, torch.device("cuda", 0))
    assert result.steps == 4 and math.isfinite(result.train_loss)
    assert set(seen) == {(True, True)}
    assert torch.backends.cudnn.benchmark == before
    assert result.model[0].weight.is_cuda and result.model[0].weight.is_contiguous(memory_format=torch.channels_last)


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
