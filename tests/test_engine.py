"""The training loop and its knobs, on real torch with a tiny model."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from autotune.config import Base, TrainConfig, scaled_lr
from autotune.engine import knobs
from autotune.engine.loop import train
from autotune.engine.step import NonFiniteLossError
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom
from autotune.errors import ConfigError
from autotune.task import load_task

CPU = torch.device("cpu")
ASSETS = Path(__file__).parent / "assets"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
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


def _whole(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("train_data", "message"),
    [
        ({"schedule": "step"}, "tuned.yaml: train: `schedule` must be one of cosine, onecycle, but got 'step'."),
        ({"cpu_threads": -1}, "tuned.yaml: train: `cpu_threads` must be >= 0, but got -1."),
        ({"cpu_threads": 2.0}, "tuned.yaml: train: `cpu_threads` must be an integer, but got 2.0."),
        ({"channels_last": "yes"}, "tuned.yaml: train: `channels_last` must be true or false, but got 'yes'."),
        ({"cudnn_benchmark": 1}, "tuned.yaml: train: `cudnn_benchmark` must be true or false, but got 1."),
        ({"compile": None}, "tuned.yaml: train: `compile` must be true or false, but got None."),
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
