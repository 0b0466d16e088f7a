"""Out-of-memory detection and peak-memory measurement.

``is_oom`` is the one predicate that decides whether an exception means "too big":
only an out-of-memory error is ever retried with less; everything else is a real error.
"""

from __future__ import annotations

import ctypes
import re
import resource
import sys

import torch

from autotune.errors import ConfigError

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


def _init_cuda() -> None:
    """Initialise CUDA in this process if nothing has yet (``torch.cuda.init``; a no-op after).

    The allocator's statistics calls do not initialise CUDA themselves:
    ``reset_peak_memory_stats`` goes straight to the allocator, which raises "Invalid
    device argument 0: did you call init?" before initialisation, and
    ``max_memory_allocated`` reads an empty table and returns 0.
    """
    torch.cuda.init()


def reset_peak_memory(device: torch.device) -> None:
    """Start counting ``peak_memory_bytes`` from now on a GPU; safe as the process's first
    CUDA call. On the CPU there is nothing to reset (the peak is the process's)."""
    if device.type == "cuda":
        _init_cuda()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the CUDA allocator's on a GPU, peak RSS on the CPU.

    On the CPU the figure covers the whole process lifetime, so it is meaningful in a
    process that runs one configuration (as every trial does).
    """
    if device.type == "cuda":
        _init_cuda()
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return int(rss if sys.platform == "darwin" else rss * 1024)


_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``3GiB``, ``512MiB``, ``1.5GB`` or ``1048576``."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise ConfigError(
            f"Cannot read the size {text!r}: write a number and a unit such as 512MiB, 3GiB "
            "or 2GB (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000)."
        )
    value = float(match.group(1)) * _UNITS[unit or "b"]
    if value < 1:
        raise ConfigError(f"The size {text!r} must be at least 1 byte.")
    return int(value)


def format_size(n: float) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n:.0f} B"


def vm_bytes(field: str = "VmSize") -> int:
    """This process's virtual memory size (``VmSize``) or its peak (``VmPeak``), Linux only."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve every allocation of ``nbytes`` or more with its own mapping.

    By default glibc raises its mmap threshold each time a mapped block is freed (up to
    32 MiB), so which tensors land on the heap, where freed space lingers, depends on
    what was allocated before. The process's peak address space then jumps up and down
    as the batch grows: a batch can fail under a cap that a larger one fits. With the
    threshold fixed, large tensors are mapped and unmapped one by one, and the peak
    follows the memory really in use. Returns False where there is no glibc ``mallopt``
    (not Linux, or another C library), and nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, nbytes) == 1


def cap_memory(limit_bytes: int, device: torch.device) -> int:
    """Let this process use at most ``limit_bytes`` more memory from now on; returns the
    baseline the limit counts from.

    On a GPU the cap is the CUDA caching allocator's fraction of the card, counted from
    zero (everything the process allocates on the device counts). On the CPU it is a real
    address-space limit (RLIMIT_AS) set to the current virtual size plus ``limit_bytes``,
    so an allocation past it fails with torch's "can't allocate memory" error, and
    glibc's mmap threshold is fixed first (``fix_mmap_threshold``) so that the address
    space grows steadily with the batch. It cannot be raised again in this process: use
    it in a process of its own.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total), device)
        return 0
    fix_mmap_threshold()
    baseline = vm_bytes("VmSize")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = baseline + limit_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return baseline


def memory_used_bytes(device: torch.device, baseline: int) -> int:
    """Peak memory used above ``baseline``, in the same terms as ``cap_memory`` counts."""
    if device.type == "cuda":
        _init_cuda()
        return int(torch.cuda.max_memory_allocated(device)) - baseline
    return vm_bytes("VmPeak") - baseline


def reraise_at_cap(exc: BaseException, device: torch.device, baseline: int, limit_bytes: int) -> None:
    """Raise ``exc`` as a MemoryError when it happened at the CPU memory cap.

    Under an address-space cap (``cap_memory``), an allocation that fails outside torch's
    allocator surfaces as some other error (a SystemError, oneDNN's "could not create a
    primitive"); when the process's peak reached the cap, it is out of memory. Otherwise
    this returns and the caller re-raises ``exc`` as it is.
    """
    if device.type == "cpu" and not is_oom(exc) and vm_bytes("VmPeak") >= baseline + 0.98 * limit_bytes:
        raise MemoryError(f"out of memory at the limit ({type(exc).__name__}: {exc})") from exc
