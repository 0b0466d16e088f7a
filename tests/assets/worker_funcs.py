"""Module-level functions for tests/test_worker.py to run in isolated processes.

``run_isolated`` pickles a function by module and name, so the child process imports
this module by name: tests/test_worker.py puts tests/assets on sys.path before the
fork server starts (the server copies the parent's sys.path when it starts).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any


def echo(**kwargs: Any) -> dict[str, Any]:
    """The arguments back, with the pid of the process that ran the call."""
    return {**kwargs, "pid": os.getpid()}


def raise_value_error(message: str) -> dict[str, Any]:
    raise ValueError(message)


def _vmsize_bytes() -> int:
    """This process's virtual memory size, from /proc/self/status (kB there)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize line in /proc/self/status")


def allocate_past_address_space_limit(headroom_bytes: int, alloc_bytes: int) -> dict[str, Any]:
    """Cap the address space at the current size plus ``headroom_bytes``, then allocate.

    A real allocation failure: torch's CPU allocator raises RuntimeError
    "DefaultCPUAllocator: can't allocate memory" when ``alloc_bytes`` exceeds the headroom.
    """
    import torch

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vmsize_bytes() + headroom_bytes, hard))
    tensor = torch.empty(alloc_bytes, dtype=torch.uint8)
    return {"allocated_bytes": tensor.numel()}


def abort() -> dict[str, Any]:
    """Die by SIGABRT without answering (and without writing a core file)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    os.abort()


def spin_forever(pid_file: str) -> dict[str, Any]:
    """Write this process's pid to ``pid_file``, then never return."""
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


def start_method() -> dict:
    """The multiprocessing start method the isolated call would start processes with."""
    import multiprocessing

    return {"method": multiprocessing.get_start_method()}
