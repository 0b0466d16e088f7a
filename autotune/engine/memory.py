"""Out-of-memory detection and peak-memory measurement.

``is_oom`` is the one predicate that decides whether an exception means "too big":
only an out-of-memory error is ever retried with less; everything else is a real error.
"""

from __future__ import annotations

import resource
import sys

import torch

_OOM_MESSAGES = (
    "CUDA out of memory",
    "DefaultCPUAllocator: can't allocate memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "out of memory",
)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is an allocation failure on the GPU or the CPU."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", None
    )
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(marker in text for marker in _OOM_MESSAGES)
    return False


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the CUDA allocator's on a GPU, peak RSS on the CPU.

    On the CPU the figure covers the whole process lifetime, so it is meaningful in a
    process that runs one configuration (as every trial does).
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return int(rss if sys.platform == "darwin" else rss * 1024)
