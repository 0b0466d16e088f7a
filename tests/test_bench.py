"""Tests of autotune.hardware.bench: the measured figures, the bandwidth arithmetic, a busy
machine, the TF32 setting and the CUDA figures (those through stand-ins where no GPU is)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.hardware import HardwareProfile, collect_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def measured_profile() -> HardwareProfile:
    """One profile with the benchmarks run (about half a second here), shared by tests."""
    return collect_profile(measure=True)


def test_cpu_figures_are_measured_and_positive(measured_profile: HardwareProfile) -> None:
    measured = measured_profile.measured
    for key in ("cpu_matmul_fp32_tflops", "cpu_matmul_bf16_tflops", "cpu_bf16_speedup",
                "cpu_memory_copy_gbps", "bench_seconds"):
        assert measured[key] > 0, key
    assert measured["cpu_bench_rounds"] in (1, 2)
    if hasattr(os, "getloadavg"):
        assert measured["load_average_1m_before"] >= 0
        assert measured["load_average_1m_after"] >= 0
    if measured_profile.device == "cpu":
        assert not any(key.startswith(("cuda_", "h2d_")) for key in measured)


def test_summary_shows_the_figures_with_units(measured_profile: HardwareProfile) -> None:
    text = measured_profile.summary()
    m = measured_profile.measured
    assert re.search(r"^  CPU matmul:  fp32 [0-9.]+, bf16 [0-9.]+ TFLOP/s$", text, re.M)
    # On a GPU machine the CUDA figures share these rows; without one they are absent.
    cuda = measured_profile.device == "cuda"
    assert bool(re.search(r"^  CUDA matmul: fp32 [0-9.,]+, tf32 [0-9.,]+, fp16 [0-9.,]+, bf16 [0-9.,]+ TFLOP/s$",
                          text, re.M)) == cuda
    assert re.search(r"^  Memory copy: CPU [0-9.,]+" + (r", CUDA [0-9.,]+" if cuda else "")
                     + r" GB/s \(read \+ written\)$", text, re.M)
    assert re.search(r"^  Over fp32:   CPU bf16 autocast [0-9.]+x" + (r", CUDA fp16 [0-9.]+x, CUDA bf16 [0-9.]+x" if cuda
                                                                   else "") + "$", text, re.M)
    assert f"  Took:        {m['bench_seconds']} s" in text
    assert "Other:" not in text  # every key this version writes has its row


def test_copy_bandwidth_counts_bytes_read_and_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.hardware import bench

    assert bench.gbps(3e9, 1.5) == 2.0
    monkeypatch.setattr(bench, "median_time_s", lambda fn, sync: 0.5)
    # one copy of 10^6 bytes reads 10^6 and writes 10^6: 2 * 10^6 bytes in 0.5 s
    assert bench.memory_bandwidth_gbps("cpu", nbytes=10**6) == pytest.approx(0.004)


def test_a_busy_machine_repeats_the_cpu_set_and_keeps_the_best(monkeypatch) -> None:
    from autotune.hardware import bench

    first = {"cpu_matmul_fp32_tflops": 0.1, "cpu_memory_copy_gbps": 30.0, "cpu_bf16_speedup": 9.0}
    second = {"cpu_matmul_fp32_tflops": 0.2, "cpu_memory_copy_gbps": 20.0, "cpu_bf16_speedup": 2.0}
    rounds = iter([first, second])
    monkeypatch.setattr(bench, "measure_cpu", lambda: next(rounds))
    monkeypatch.setattr(bench, "usable_cores", lambda: 2)
    assert bench.measure_cpu_under_load(2.5) == {  # the speed-up of the faster fp32 round
        "cpu_matmul_fp32_tflops": 0.2, "cpu_memory_copy_gbps": 30.0, "cpu_bf16_speedup": 2.0,
        "cpu_bench_rounds": 2}
    rounds = iter([first])
    assert bench.measure_cpu_under_load(2.0) == {**first, "cpu_bench_rounds": 1}  # not above
    rounds = iter([first])
    assert bench.measure_cpu_under_load(None)["cpu_bench_rounds"] == 1  # no load average


def _fp32_precision() -> str:
    import torch

    matmul = torch.backends.cuda.matmul
    try:
        return matmul.fp32_precision
    except AttributeError:
        pytest.skip(f"torch {torch.__version__} has no torch.backends.cuda.matmul.fp32_precision")


def test_tf32_setting_is_restored_after_the_measurement() -> None:
    from autotune.hardware.bench import cuda_matmul_precision

    before = _fp32_precision()
    with cuda_matmul_precision("tf32"):
        assert _fp32_precision() == "tf32"
    assert _fp32_precision() == before
    with pytest.raises(KeyError), cuda_matmul_precision("tf32"):
        raise KeyError("a failed measurement")
    assert _fp32_precision() == before
    with pytest.raises(ValueError, match=r"^precision must be 'tf32' or 'ieee', got 'fast'\.$"):
        with cuda_matmul_precision("fast"):
            pass


def test_tf32_setting_is_restored_with_the_legacy_api() -> None:
    code = """
import torch
from autotune.hardware import bench
bench._has_backend_precision = lambda: False  # as on torch before 2.9
torch.set_float32_matmul_precision("medium")
with bench.cuda_matmul_precision("tf32"):
    print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
with bench.cuda_matmul_precision("ieee"):
    print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
print(torch.get_float32_matmul_precision())
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["high True", "highest False", "medium", ""]


def test_cuda_figures_measure_fp32_and_tf32_each_under_its_precision(monkeypatch) -> None:
    import torch

    from autotune.hardware import bench

    before = _fp32_precision()
    seen = []

    def fake_matmul(device: str, dtype: torch.dtype) -> float:
        seen.append((dtype, torch.backends.cuda.matmul.fp32_precision))
        return {torch.float32: 50.0, torch.float16: 400.0, torch.bfloat16: 500.0}[dtype]

    monkeypatch.setattr(bench, "matmul_tflops", fake_matmul)
    monkeypatch.setattr(bench, "memory_bandwidth_gbps", lambda device: 3000.0)
    monkeypatch.setattr(bench, "h2d_bandwidth_gbps", lambda pinned: 50.0 if pinned else 20.0)
    figures = bench.measure_cuda(bf16_supported=True)
    assert seen[:2] == [(torch.float32, "ieee"), (torch.float32, "tf32")]
    assert _fp32_precision() == before
    assert figures == {
        "cuda_matmul_fp32_tflops": 50.0, "cuda_matmul_tf32_tflops": 50.0,
        "cuda_matmul_fp16_tflops": 400.0, "cuda_matmul_bf16_tflops": 500.0,
        "cuda_fp16_speedup": 8.0, "cuda_bf16_speedup": 10.0, "cuda_memory_copy_gbps": 3000.0,
        "h2d_pinned_gbps": 50.0, "h2d_pageable_gbps": 20.0,
    }
    assert "cuda_matmul_bf16_tflops" not in bench.measure_cuda(bf16_supported=False)


def test_cuda_benchmarks_without_cuda_raise() -> None:
    import torch

    from autotune.hardware import bench

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    message = r"^h2d_bandwidth_gbps: CUDA was asked for, but torch sees no CUDA device\.$"
    with pytest.raises(RuntimeError, match=message):
        bench.h2d_bandwidth_gbps(pinned=True)
    with pytest.raises(RuntimeError, match=r"^memory_bandwidth_gbps: CUDA was asked for"):
        bench.memory_bandwidth_gbps("cuda")


def test_bf16_far_slower_in_two_rounds_stops_the_speedup_early():
    from autotune.hardware.bench import cpu_bf16_speedup

    calls = []

    def timer(device, dtype, size, autocast_dtype=None):
        calls.append(autocast_dtype)
        return 100.0 if autocast_dtype is not None else 1.0  # a CPU without bf16 kernels

    assert cpu_bf16_speedup(rounds=5, timer=timer) == pytest.approx(0.01)
    assert len(calls) == 4  # two rounds, not five


def test_a_slow_call_is_timed_fewer_times_within_max_s(monkeypatch):
    """On a fake clock each call takes exactly what it says, so a busy machine cannot
    change how many times it is called."""
    from types import SimpleNamespace

    from autotune.hardware import timing

    now = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []

    def taking(seconds):
        def call():
            calls.append(1)
            now[0] += seconds
        return call

    assert timing.median_time_s(taking(0.05), max_s=0.12) == pytest.approx(0.05)
    assert len(calls) == 3  # one warm-up and two timed (0.12 / 0.05), not 2 + 5
    calls.clear()
    assert timing.median_time_s(taking(0.001), max_s=1.0) == pytest.approx(0.001)
    assert len(calls) == timing.WARMUP + timing.REPEATS  # a fast call: the usual warm-ups and repeats


def test_a_busy_moment_on_one_side_does_not_flip_the_bf16_speedup():
    from autotune.hardware.bench import cpu_bf16_speedup

    # fp32 takes 2 s and bf16 1 s a round, except one round where another process made
    # the bf16 matmul take 20 s: one timing each would have read 0.1x and ruled bf16 out.
    bf16_times = iter([20.0, 1.0, 1.0])

    def timer(device, dtype, size, autocast_dtype=None):
        return next(bf16_times) if autocast_dtype is not None else 2.0

    assert cpu_bf16_speedup(rounds=3, timer=timer) == pytest.approx(2.0)


def test_releasing_frees_what_a_failed_call_made_before_releasing():
    import weakref

    import torch

    from autotune.hardware.timing import releasing

    made: list[weakref.ref] = []
    alive_at_release: list[bool] = []

    def benchmark() -> None:
        buffer = torch.ones(1024)
        made.append(weakref.ref(buffer))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    # Without clearing, the traceback's frame would keep ``buffer`` alive until the
    # exception is gone: past the release, which could then give nothing back.
    with pytest.raises(RuntimeError, match="illegal memory access") as failure:
        with releasing(lambda: alive_at_release.append(made[0]() is not None)):
            benchmark()
    assert alive_at_release == [False]
    assert failure.traceback[-1].name == "benchmark"  # the traceback still says where it failed
    with releasing(lambda: alive_at_release.append(True)):
        pass
    assert alive_at_release == [False, True]  # released on success too


def test_measure_cuda_releases_its_memory_also_when_a_benchmark_fails(monkeypatch) -> None:
    import torch

    from autotune.hardware import bench

    calls: list[str] = []

    def failing_matmul(device: str, dtype: torch.dtype) -> float:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench, "matmul_tflops", failing_matmul)
    monkeypatch.setattr(bench, "release_cuda_memory", lambda: calls.append("released"))
    with pytest.raises(RuntimeError, match="^CUDA out of memory$"):
        bench.measure_cuda(bf16_supported=True)
    assert calls == ["released"]
    monkeypatch.setattr(bench, "matmul_tflops", lambda device, dtype: 10.0)
    monkeypatch.setattr(bench, "memory_bandwidth_gbps", lambda device: 3000.0)
    monkeypatch.setattr(bench, "h2d_bandwidth_gbps", lambda pinned: 50.0)
    assert bench.measure_cuda(bf16_supported=False)["cuda_matmul_fp32_tflops"] == 10.0
    assert calls == ["released", "released"]


@pytest.mark.parametrize("once_s", [1e-6, 1.4e-3, 0.018, 0.05, 0.14, 0.6, 3.0])
def test_cuda_matmul_timing_fills_its_repeats_and_stays_bounded(once_s):
    from autotune.hardware import bench

    inner, warmup, repeats = bench.cuda_matmul_plan(once_s)
    assert 1 <= inner <= bench.CUDA_MAX_INNER and warmup >= 1 and repeats >= 1
    per_repeat_s = inner * once_s
    # Each repeat lasts about CUDA_REPEAT_S unless one matmul is longer or the cap is hit.
    if inner < bench.CUDA_MAX_INNER and once_s < bench.CUDA_REPEAT_S:
        assert bench.CUDA_REPEAT_S / 2 < per_repeat_s <= bench.CUDA_REPEAT_S
    # Warm-up and timed repeats stay within CUDA_MAX_S, except that a matmul is always
    # timed at least once after one warm-up, however long it takes.
    assert (warmup + repeats) * per_repeat_s <= max(bench.CUDA_MAX_S, 2 * once_s)
    if once_s <= bench.CUDA_REPEAT_S / 4:
        assert (warmup, repeats) == (bench.WARMUP, bench.REPEATS)


NEEDS_CUDA = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")


@NEEDS_CUDA
def test_measure_cuda_gives_back_the_memory_it_took_and_stays_bounded() -> None:
    import time

    import torch

    from autotune.hardware import bench

    torch.cuda.init()
    before = (torch.cuda.memory_reserved(), torch.cuda.memory_allocated())
    start = time.perf_counter()
    figures = bench.measure_cuda(bf16_supported=torch.cuda.is_bf16_supported())
    took_s = time.perf_counter() - start
    assert (torch.cuda.memory_reserved(), torch.cuda.memory_allocated()) == before
    assert took_s < 15, f"the CUDA benchmarks took {took_s:.1f} s"
    assert all(value > 0 for value in figures.values()), figures


@NEEDS_CUDA
def test_event_timing_agrees_with_the_host_clock_for_long_gpu_work() -> None:
    import time

    import torch

    from autotune.hardware.timing import cuda_median_time_s

    a = torch.randn(4096, 4096, device="cuda")

    def work() -> None:
        for _ in range(20):
            a @ a

    work()
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    host_s = time.perf_counter() - start
    assert cuda_median_time_s(work, warmup=1, repeats=3) == pytest.approx(host_s, rel=0.3)
