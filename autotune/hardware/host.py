"""What every hardware module needs and none owns: the cores this process may use, the
load, GiB, and the AMP dtypes a profile decides on. It imports no other hardware module,
so ``bench``, ``profile`` and ``summary`` all build on it without importing each other in
a circle."""

from __future__ import annotations

import os
from typing import Any

from autotune.hardware.nvml import NA

AMP_DTYPES = ("fp16", "bf16")
_GIB = 1024**3


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one.

    Under ``taskset -c 0`` (or a container's CPU set) this is 1 on a many-core machine;
    training here gets those cores only, so they are what the profile describes.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average_1m() -> float | None:
    """The system's 1-minute load average, None where there is none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _gib(value: Any) -> Any:
    """Bytes rounded to whole GiB; "N/A" stays "N/A"."""
    return round(value / _GIB) if isinstance(value, (int, float)) else NA
