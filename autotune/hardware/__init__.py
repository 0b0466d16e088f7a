"""What this machine is and what it can do: NVML, microbenchmarks, the hardware profile.

``nvml`` is the only module of autotune that touches ``pynvml``. ``bench`` needs torch
and is imported on first use of one of its names, so ``load_profile`` and the profile
dataclass work on a machine without torch (``autotune compare``).
"""

from __future__ import annotations

from typing import Any

from autotune.hardware.nvml import NA, GpuInfo, NvmlReport, query_gpus
from autotune.hardware.profile import (
    AMP_DTYPES,
    SCHEMA_VERSION,
    HardwareProfile,
    collect_host,
    collect_profile,
    decide_amp,
    fingerprint,
    load_average_1m,
    load_profile,
    usable_cores,
)

_BENCH_NAMES = (
    "cpu_bf16_speedup",
    "cpu_matmul_tflops",
    "cuda_matmul_precision",
    "gbps",
    "h2d_bandwidth_gbps",
    "matmul_tflops",
    "measure",
    "measure_cpu",
    "measure_cpu_under_load",
    "measure_cuda",
    "median_time_s",
    "memory_bandwidth_gbps",
)

__all__ = [
    "AMP_DTYPES",
    "NA",
    "SCHEMA_VERSION",
    "GpuInfo",
    "HardwareProfile",
    "NvmlReport",
    "collect_host",
    "collect_profile",
    "decide_amp",
    "fingerprint",
    "load_average_1m",
    "load_profile",
    "query_gpus",
    "usable_cores",
    *_BENCH_NAMES,
]


def __getattr__(name: str) -> Any:
    """The benchmark functions, imported (with torch) on first use."""
    if name in _BENCH_NAMES:
        from autotune.hardware import bench

        return getattr(bench, name)
    raise AttributeError(f"module 'autotune.hardware' has no attribute {name!r}")
