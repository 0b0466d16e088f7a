"""Short, bounded microbenchmarks: matmul peaks, memory-copy and host-to-device bandwidth.

Each figure is the median of a few timed repeats after warm-up repeats (``timing.py``).
Work on the GPU (matmuls, device copies) is timed with CUDA events; host-to-device copies
on the host's clock after synchronising, since the host's part of the copy is part of
what they measure. The CUDA set gives back the GPU memory it took when it ends, failed
or not, so the tuner does not hold GPU 0's memory for the rest of the run.

Units are in the key names: TFLOP/s is 10^12 floating-point operations per second, GB/s
10^9 bytes per second (decimal, as vendors quote bandwidth).

The machines this runs on are shared. ``measure`` records the 1-minute load average
before and after and the time the benchmarks took. When the load average before is above
the number of cores this process may run on, the CPU set runs a second time and the best
(largest) figure per key is kept: contention only ever makes a benchmark slower, so the
larger of two figures is the closer one to what the machine can do. The bf16 speed-up, a
ratio, is taken from the round with the faster fp32 matmul instead. On a small CPU the
CPU set takes one to two seconds (twice that when repeated); CUDA adds a few seconds,
most of it CUDA start-up and pinning host memory.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch

from autotune.hardware.host import load_average_1m, usable_cores
from autotune.hardware.timing import (
    REPEATS,
    WARMUP,
    cuda_median_time_s,
    gbps,
    median_time_s,
    releasing,
    synchronizer,
)

CPU_SIZE = 512  # big enough to reach the matmul kernels' steady state on a small CPU
CUDA_SIZE = 8192  # a large GPU needs a large matmul to keep every SM busy near its peak
INNER = 4  # CPU matmuls per timed repeat, so the clock's resolution does not matter
# CUDA matmuls per timed repeat: as many as fill CUDA_REPEAT_S (so the clocks settle under
# a sustained load, as in training), at most CUDA_MAX_INNER; a slow GPU's fp32 matmul of
# over CUDA_REPEAT_S is timed alone. Per dtype this is about (WARMUP + REPEATS) x
# CUDA_REPEAT_S, and at most about CUDA_MAX_S however slow the GPU (``cuda_matmul_plan``).
CUDA_REPEAT_S = 0.05
CUDA_MAX_INNER = 50
CPU_MAX_S = 1.0  # a CPU matmul timing that would take longer is repeated fewer times
CUDA_MAX_S = 2.0  # the same for one dtype's CUDA matmul timing
# Copy buffers well above the last-level cache, so the copy streams through memory:
# server CPUs have tens of MiB of L3; an H100 has 50 MiB of L2, an H200 the same.
CPU_COPY_BYTES = 256 * 1024**2
CUDA_COPY_BYTES = 1024**3
H2D_BYTES = 256 * 1024**2  # long enough (milliseconds over PCIe) to hide launch latency

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_LEGACY_PRECISION = {"tf32": "high", "ieee": "highest"}


def _device(device: str | torch.device, caller: str) -> torch.device:
    """``device`` as a torch.device; RuntimeError when it is CUDA and torch sees none."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{caller}: CUDA was asked for, but torch sees no CUDA device.")
    return dev


def cuda_matmul_plan(once_s: float) -> tuple[int, int, int]:
    """Matmuls per timed repeat, warm-up repeats and timed repeats for a CUDA matmul that
    took ``once_s`` seconds: repeats of about CUDA_REPEAT_S each, and fewer repeats where
    even one matmul per repeat would take the set past CUDA_MAX_S."""
    inner = max(1, min(CUDA_MAX_INNER, int(CUDA_REPEAT_S / max(once_s, 1e-9))))
    per_repeat_s = inner * once_s
    if per_repeat_s * (WARMUP + REPEATS) <= CUDA_MAX_S:
        return inner, WARMUP, REPEATS
    return inner, 1, max(1, min(REPEATS, int(CUDA_MAX_S / per_repeat_s) - 1))


def _cuda_matmul_time_s(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Seconds per ``size`` x ``size`` matmul on a CUDA device, inputs and output in ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def one() -> None:
        torch.mm(a, b, out=out)

    inner, warmup, repeats = cuda_matmul_plan(cuda_median_time_s(one, warmup=1, repeats=1))

    def run() -> None:
        for _ in range(inner):
            one()

    return cuda_median_time_s(run, warmup, repeats) / inner


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

    return median_time_s(run, synchronizer(device), max_s=CPU_MAX_S if device.type == "cpu" else None) / INNER


def _tflops(size: int, seconds: float) -> float:
    """TFLOP/s of one square matmul (2 n^3 floating-point operations)."""
    return 2.0 * size**3 / seconds / 1e12


def matmul_tflops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
) -> float:
    """Measured TFLOP/s of a square matmul on ``device`` with inputs in ``dtype``.

    ``size`` defaults to 512 on the CPU and 8192 on CUDA. An fp32 matmul on CUDA runs
    with whatever ``cuda_matmul_precision`` is in force (``measure_cuda`` sets it).
    """
    dev = _device(device, "matmul_tflops")
    if dev.type == "cuda":
        n = size or CUDA_SIZE
        return _tflops(n, _cuda_matmul_time_s(dev, dtype, n))
    n = size or CPU_SIZE
    return _tflops(n, _matmul_time_s(dev, dtype, n))


def memory_bandwidth_gbps(device: str | torch.device = "cpu", nbytes: int | None = None) -> float:
    """Copy bandwidth of the device's memory in GB/s, counting bytes read + written.

    ``dst.copy_(src)`` of ``nbytes`` (default 256 MiB on the CPU, 1 GiB on CUDA, far above
    the caches) reads ``nbytes`` and writes ``nbytes``, so each copy counts 2 x ``nbytes``,
    as STREAM's copy does. Both buffers are written before timing, so first-touch page
    faults are not timed.
    """
    dev = _device(device, "memory_bandwidth_gbps")
    n = nbytes or (CUDA_COPY_BYTES if dev.type == "cuda" else CPU_COPY_BYTES)
    src = torch.ones(n, dtype=torch.uint8, device=dev)
    dst = torch.zeros_like(src)
    if dev.type == "cuda":
        return gbps(2 * n, cuda_median_time_s(lambda: dst.copy_(src)))
    return gbps(2 * n, median_time_s(lambda: dst.copy_(src), synchronizer(dev)))


def h2d_bandwidth_gbps(pinned: bool, nbytes: int = H2D_BYTES) -> float:
    """Host-to-device copy bandwidth to CUDA device 0 in GB/s (bytes transferred once).

    ``pinned`` copies from page-locked memory (``pin_memory()``), as a DataLoader with
    ``pin_memory=True`` does; otherwise from ordinary (pageable) memory, which CUDA stages
    through a pinned buffer of its own. Each copy is ``non_blocking`` and timed up to
    ``torch.cuda.synchronize``.
    """
    dev = _device("cuda", "h2d_bandwidth_gbps")
    src = torch.ones(nbytes, dtype=torch.uint8)
    if pinned:
        src = src.pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    seconds = median_time_s(lambda: dst.copy_(src, non_blocking=True), synchronizer(dev))
    return gbps(nbytes, seconds)


def _has_backend_precision() -> bool:
    """Whether torch has the per-backend ``torch.backends.cuda.matmul.fp32_precision`` (2.9+)."""
    try:
        torch.backends.cuda.matmul.fp32_precision  # noqa: B018 (probing the attribute)
    except AttributeError:
        return False
    return True


@contextmanager
def cuda_matmul_precision(precision: str) -> Iterator[None]:
    """Run fp32 matmuls on CUDA as "tf32" or "ieee" (true fp32) inside the block only.

    The previous setting is put back on the way out, exception or not, so measuring tf32
    does not change the caller's numerics. Where torch has the per-backend setting
    ``torch.backends.cuda.matmul.fp32_precision`` it is used, and only it: once that API
    has been used, the legacy getters (``allow_tf32``, ``get_float32_matmul_precision``)
    can raise over the "mix of legacy and new APIs". Older torch has only the legacy
    ``set_float32_matmul_precision`` ("high" allows tf32, "highest" does not), which
    ``torch.backends.cuda.matmul.allow_tf32`` reads and writes too.
    """
    if precision not in _LEGACY_PRECISION:
        raise ValueError(f"precision must be 'tf32' or 'ieee', got {precision!r}.")
    matmul = torch.backends.cuda.matmul
    if _has_backend_precision():
        previous = matmul.fp32_precision
        matmul.fp32_precision = precision

        def restore() -> None:
            matmul.fp32_precision = previous
    else:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(_LEGACY_PRECISION[precision])

        def restore() -> None:
            torch.set_float32_matmul_precision(previous)
    try:
        yield
    finally:
        restore()


def cpu_matmul_tflops(dtype: torch.dtype = torch.float32, size: int = CPU_SIZE) -> float:
    """Measured TFLOP/s of a square matmul on the CPU with inputs in ``dtype``."""
    return matmul_tflops("cpu", dtype, size)


# bf16 this many times slower than fp32 in two rounds settles the speed-up below 1.
CLEARLY_SLOWER = 3.0


def cpu_bf16_speedup(size: int = CPU_SIZE, rounds: int = 5,
                     timer: Callable[..., float] | None = None) -> float:
    """fp32 matmul time over bf16-autocast matmul time on the CPU (> 1 means bf16 is faster).

    The two are timed in alternating rounds (fp32, bf16, fp32, bf16, ...) and each side's
    fastest round is kept: another process on the machine only ever slows a timing, so a
    busy moment that falls on one side's only timing cannot flip the ratio (and with it
    whether bf16 is searched at all). ``timer`` stands in for ``_matmul_time_s`` in tests.
    """
    time_of = timer or _matmul_time_s
    cpu = torch.device("cpu")
    fp32_s, bf16_s = [], []
    for _ in range(rounds):
        fp32_s.append(time_of(cpu, torch.float32, size))
        bf16_s.append(time_of(cpu, torch.float32, size, autocast_dtype=torch.bfloat16))
        if len(bf16_s) >= 2 and min(bf16_s) > CLEARLY_SLOWER * min(fp32_s):
            break  # two busy moments on bf16's side in a row are unlikely; more rounds would not make it faster
    return min(fp32_s) / min(bf16_s)


def _rounded(value: float) -> float:
    """Four significant digits: enough for a ratio or a peak, readable in YAML."""
    return float(f"{value:.4g}")


def measure_cpu() -> dict[str, float]:
    """The CPU figures a hardware profile keeps, with units in the key names."""
    return {
        "cpu_matmul_fp32_tflops": _rounded(cpu_matmul_tflops(torch.float32)),
        "cpu_matmul_bf16_tflops": _rounded(cpu_matmul_tflops(torch.bfloat16)),
        "cpu_bf16_speedup": _rounded(cpu_bf16_speedup()),
        "cpu_memory_copy_gbps": _rounded(memory_bandwidth_gbps("cpu")),
    }


def release_cuda_memory() -> None:
    """Give back the GPU memory torch's caching allocator keeps after the tensors are
    gone, cuBLAS's workspaces (held through the allocator) included, and the cached
    pinned host memory where this torch can."""
    if not torch.cuda.is_initialized():
        return
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()
    empty_host_cache = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
    if empty_host_cache is not None:
        empty_host_cache()


def measure_cuda(bf16_supported: bool) -> dict[str, float]:
    """CUDA device 0: matmul peaks per dtype, speedups over fp32, copy and H2D bandwidth.

    fp32 is measured as true fp32 and tf32 as fp32 inputs with tf32 allowed, each under
    ``cuda_matmul_precision``, which restores the caller's setting afterwards. The
    memory the benchmarks took goes back to the driver afterwards (``releasing``).
    """
    with releasing(release_cuda_memory):
        return _cuda_figures(bf16_supported)


def _cuda_figures(bf16_supported: bool) -> dict[str, float]:
    """The figures of ``measure_cuda``."""
    peaks = {}
    with cuda_matmul_precision("ieee"):
        peaks["fp32"] = matmul_tflops("cuda", torch.float32)
    with cuda_matmul_precision("tf32"):
        peaks["tf32"] = matmul_tflops("cuda", torch.float32)
    for dtype in [torch.float16] + ([torch.bfloat16] if bf16_supported else []):
        peaks[_DTYPE_NAMES[dtype]] = matmul_tflops("cuda", dtype)
    figures = {f"cuda_matmul_{name}_tflops": _rounded(t) for name, t in peaks.items()}
    for name in ("fp16", "bf16"):
        if name in peaks:
            figures[f"cuda_{name}_speedup"] = _rounded(peaks[name] / peaks["fp32"])
    figures["cuda_memory_copy_gbps"] = _rounded(memory_bandwidth_gbps("cuda"))
    figures["h2d_pinned_gbps"] = _rounded(h2d_bandwidth_gbps(pinned=True))
    figures["h2d_pageable_gbps"] = _rounded(h2d_bandwidth_gbps(pinned=False))
    return figures


def _best_of(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """Per key the larger figure, except the bf16 speed-up: a ratio of two noisy timings
    is not better for being larger, so it comes from the round whose fp32 matmul was
    faster (the quieter one)."""
    best = {key: max(value, second[key]) for key, value in first.items()}
    quiet = max(first, second, key=lambda r: r["cpu_matmul_fp32_tflops"])
    return {**best, "cpu_bf16_speedup": quiet["cpu_bf16_speedup"]}


def measure_cpu_under_load(load_1m: float | None) -> dict[str, float]:
    """The CPU figures; run twice, keeping the best, when ``load_1m`` exceeds the cores.

    The cores are those this process may run on. ``cpu_bench_rounds`` says how many times
    the set ran (1 or 2).
    """
    figures = measure_cpu()
    rounds = 1
    if load_1m is not None and load_1m > usable_cores():
        figures = _best_of(figures, measure_cpu())
        rounds = 2
    return {**figures, "cpu_bench_rounds": rounds}


def measure(device: str = "cpu", bf16_supported: bool = False) -> dict[str, float]:
    """All figures for a profile: the CPU always, CUDA device 0 too when ``device`` is cuda.

    Also ``bench_seconds`` (the time all benchmarks took) and the 1-minute load average
    before and after (``load_average_1m_before`` / ``_after``, absent where the system has
    none), so a profile taken on a busy machine can be spotted.
    """
    start = time.perf_counter()
    load_before = load_average_1m()
    figures = measure_cpu_under_load(load_before)
    if device == "cuda":
        figures.update(measure_cuda(bf16_supported))
    figures["bench_seconds"] = round(time.perf_counter() - start, 2)
    load_after = load_average_1m()
    if load_before is not None and load_after is not None:
        figures["load_average_1m_before"] = load_before
        figures["load_average_1m_after"] = load_after
    return figures
