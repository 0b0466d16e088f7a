"""The final run on several devices: one process per device, started by ``torchrun``.

``launch`` starts ``python -m torch.distributed.run --standalone --nproc_per_node N -m
autotune.engine.ddp_main ...``; torchrun gives every process its RANK, LOCAL_RANK and
WORLD_SIZE. Each process joins the group (nccl on GPUs, gloo on the CPU), trains the
model wrapped in DistributedDataParallel on its share of every batch (the tuned
micro-batch is per rank), and the loop reduces losses and evaluation counts across ranks.
Only rank 0 writes checkpoints, the weights and the result.

A ``Dist`` with ``world == 1`` is the single-process run: every helper here then does
nothing, so the loop has no branches for it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from autotune.errors import AutotuneError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def rank_seed(seed: int, rank: int) -> int:
    """A seed of rank ``rank``'s own, derived from the run's ``seed``: ``seed`` itself on
    rank 0 (a single process is seeded as it always was), otherwise a 63-bit number
    mixed from both (numpy's ``SeedSequence``), so no two ranks, nor rank 1 of one seed
    and rank 0 of the next seed, share a stream of dropout masks or random transforms."""
    if rank == 0:
        return seed
    low, high = np.random.SeedSequence([seed % 2**64, rank]).generate_state(2)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def from_env() -> Dist:
    """The process's place in a torchrun group, read from the variables torchrun sets."""
    try:
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise AutotuneError(f"Bad RANK / WORLD_SIZE / LOCAL_RANK in the environment: {exc}") from exc


def join(d: Dist) -> torch.device:
    """Join the process group (when there is more than one process); returns this rank's
    device: its local GPU when CUDA is there, else the CPU."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", d.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if d.active and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def leave(finished: bool = False) -> None:
    """Leave the process group. After a run every rank ``finished``, the ranks wait for
    each other first: a rank that tears its connections down while another is still
    writing can abort the other's exit (gloo: "terminate called without an active
    exception"). After a failure nobody waits, since the other ranks may never come."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks."""
    if not d.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Within an accumulation group, skip the gradient all-reduce for all but the last
    micro-batch (``DistributedDataParallel.no_sync``); a plain model has nothing to skip."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_sum(values: Sequence[float], d: Dist, device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (float64)."""
    if not d.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def agreement(d: Dist, device: torch.device) -> Callable[[bool, float], tuple[bool, float]] | None:
    """For a decision the ranks must take together at the same step: a function of this
    rank's flag and a number that returns whether any rank's flag is set and the ranks'
    mean of the number, from one all-reduce, alike on every rank. None for a single
    process, which decides alone (``checkpoint.Checkpointer.decide``)."""
    if not d.active:
        return None

    def agree(flag: bool, value: float) -> tuple[bool, float]:
        flags, total = all_sum([1.0 if flag else 0.0, value], d, device)
        return flags > 0, total / d.world

    return agree


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: each rank evaluates its share of the
    validation set once (no padding, so nothing is counted twice)."""

    def __init__(self, n: int, d: Dist):
        self.indices = list(range(d.rank, n, d.world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def launch(nproc: int, args: Sequence[str], cwd: Path | None = None) -> int:
    """Run ``autotune.engine.ddp_main`` with ``args`` in ``nproc`` processes through
    torchrun on this machine; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "autotune.engine.ddp_main", *args]
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 for its processes unless it is set: a CPU run's
    # threads come from the config (cpu_threads) instead, so leave it to that.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, cwd=cwd, env=env).returncode
