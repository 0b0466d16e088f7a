"""Short, bounded microbenchmarks of matrix multiplication.

Each figure is the median of a few timed repeats after warm-up repeats, so one slow
repeat (another process waking up, a first-call allocation) does not decide it. CUDA
timings synchronise with the device before the clock is read. On the CPU everything here
takes well under a second; on a GPU a few hundred milliseconds.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch

CPU_SIZE = 512  # big enough to reach the matmul kernels' steady state on a small CPU
CUDA_SIZE = 4096  # a GPU needs a large matmul before it gets near its peak
WARMUP = 2
REPEATS = 5
INNER = 4  # matmuls per timed repeat, so the clock's resolution does not matter

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device to finish its queued work (CUDA only)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def median_time_s(
    fn: Callable[[], Any],
    sync: Callable[[], None] = lambda: None,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times_s.append(time.perf_counter() - start)
    return statistics.median(times_s)


def _matmul_time_s(
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Seconds per ``size`` x ``size`` matmul with inputs in ``dtype``.

    With ``autocast_dtype`` the inputs stay in ``dtype`` and autocast casts them, as it
    would in a training step (the cast is part of the time).
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def context() -> Any:
        if autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def run() -> None:
        with context(), torch.no_grad():
            for _ in range(INNER):
                torch.mm(a, b)

    return median_time_s(run, _synchronizer(device)) / INNER


def _tflops(size: int, seconds: float) -> float:
    """TFLOP/s of one square matmul (2 n^3 floating-point operations)."""
    return 2.0 * size**3 / seconds / 1e12


def matmul_tflops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
) -> float:
    """Measured TFLOP/s of a square matmul on ``device`` with inputs in ``dtype``.

    ``size`` defaults to 512 on the CPU and 4096 on CUDA.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("matmul_tflops: CUDA was asked for, but torch sees no CUDA device.")
    n = size or (CUDA_SIZE if dev.type == "cuda" else CPU_SIZE)
    return _tflops(n, _matmul_time_s(dev, dtype, n))


def cpu_matmul_tflops(dtype: torch.dtype = torch.float32, size: int = CPU_SIZE) -> float:
    """Measured TFLOP/s of a square matmul on the CPU with inputs in ``dtype``."""
    return matmul_tflops("cpu", dtype, size)


def cpu_bf16_speedup(size: int = CPU_SIZE) -> float:
    """fp32 matmul time over bf16-autocast matmul time on the CPU (> 1 means bf16 is faster)."""
    cpu = torch.device("cpu")
    fp32_s = _matmul_time_s(cpu, torch.float32, size)
    bf16_s = _matmul_time_s(cpu, torch.float32, size, autocast_dtype=torch.bfloat16)
    return fp32_s / bf16_s


def _rounded(value: float) -> float:
    """Four significant digits: enough for a ratio or a peak, readable in YAML."""
    return float(f"{value:.4g}")


def measure_cpu() -> dict[str, float]:
    """The CPU figures a hardware profile keeps, with units in the key names."""
    return {
        "cpu_matmul_fp32_tflops": _rounded(cpu_matmul_tflops(torch.float32)),
        "cpu_matmul_bf16_tflops": _rounded(cpu_matmul_tflops(torch.bfloat16)),
        "cpu_bf16_speedup": _rounded(cpu_bf16_speedup()),
    }


def measure_cuda(bf16_supported: bool) -> dict[str, float]:
    """Matmul peaks of CUDA device 0 per dtype, and the speedups over fp32."""
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if bf16_supported else [])
    peaks = {dtype: matmul_tflops("cuda", dtype) for dtype in dtypes}
    figures = {f"cuda_matmul_{_DTYPE_NAMES[d]}_tflops": _rounded(t) for d, t in peaks.items()}
    for dtype in dtypes[1:]:
        speedup = peaks[dtype] / peaks[torch.float32]
        figures[f"cuda_{_DTYPE_NAMES[dtype]}_speedup"] = _rounded(speedup)
    return figures


def measure(device: str = "cpu", bf16_supported: bool = False) -> dict[str, float]:
    """All figures for a profile: the CPU always, CUDA device 0 too when ``device`` is cuda."""
    figures = measure_cpu()
    if device == "cuda":
        figures.update(measure_cuda(bf16_supported))
    return figures
