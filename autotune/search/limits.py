"""Memory limits of the search: the largest micro-batch per (amp, checkpointing) pair.

Before a new study, ``probe_limits`` runs the max micro-batch finder (``probe.py``) for
every pair the space allows, under the memory limit; ``apply_limits`` writes the results
into the space, so a trial above its pair's limit is ruled out without running and
micro-batch choices above every pair's limit are removed with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.engine.memory import format_size
from autotune.hardware.devices import cuda_gpus
from autotune.search.probe import FinderResult, find_max_batch, isolated_prober
from autotune.search.space import SearchSpace, memory_key
from autotune.model.task import Task

GRANULARITY = 8  # micro-batches are probed in multiples of 8 (tensor-core friendly)
REL_TOL = 0.02  # stop when the answer is within 2% of the true largest


def memory_pairs(space: SearchSpace) -> list[tuple[str, bool]]:
    """The (amp, checkpointing) pairs the space can produce."""
    amp = space.params.get("amp")
    ckpt = space.params.get("checkpointing")
    amps = list(amp.choices) if amp and amp.choices else ["off"]
    ckpts = list(ckpt.choices) if ckpt and ckpt.choices else [False]
    return [(a, c) for a in amps for c in ckpts]


def default_limit_bytes(device_type: str, profile_gpus: list[dict[str, Any]], host: dict[str, Any],
                        devices: list[dict[str, Any]] | None = None) -> int:
    """Without --memory-limit: the memory of the GPU trials run on, or the memory
    available on the host.

    Trials run on CUDA device 0 of this process, which under ``CUDA_VISIBLE_DEVICES``, on
    a node of mixed GPUs or under MIG need not be the profile's first GPU: its memory is
    the one torch reports for it (``hardware.devices.cuda_gpus``; ``devices`` defaults to
    what torch sees), the profile's first GPU only where torch sees none.
    """
    if device_type == "cuda":
        found = cuda_gpus(profile_gpus, devices) or profile_gpus[:1]
        total = found[0].get("memory_total_bytes") if found else None
        if isinstance(total, int):
            return total
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(host.get("memory_total_bytes") or 2**33)


def probe_limits(task: Task, space: SearchSpace, limit_bytes: int, headroom: float, progress: bool = True) -> dict[str, FinderResult]:
    """The largest micro-batch of each (amp, checkpointing) pair, between the space's
    smallest and largest micro-batch choice."""
    micro = space.params.get("micro_batch_size")
    choices = micro.choices if micro and micro.choices else (TrainConfig.micro_batch_size,)
    g = GRANULARITY if min(choices) >= GRANULARITY else 1
    found: dict[str, FinderResult] = {}
    pairs = sorted(memory_pairs(space), key=lambda pair: pair[1])  # without checkpointing first
    bar = tqdm(pairs, desc="memory probe", unit="pair", disable=not progress)
    for amp, ckpt in bar:
        plain = found.get(memory_key(amp, False))
        if ckpt and plain is not None and plain.max_batch >= max(choices):
            # Checkpointing only removes stored activations: when the largest choice
            # fits without it, it fits with it. No probe needed.
            found[memory_key(amp, ckpt)] = FinderResult(max(choices), exact=True, inferred_from=memory_key(amp, False))
            continue
        cfg = TrainConfig.from_base(task.base, amp=amp, checkpointing=ckpt)
        prober = isolated_prober(task, cfg, limit_bytes, headroom)
        found[memory_key(amp, ckpt)] = find_max_batch(
            prober, limit_bytes, headroom, low=min(choices), high=max(choices), granularity=g, rel_tol=REL_TOL
        )
        bar.set_postfix_str(f"{memory_key(amp, ckpt)}: {found[memory_key(amp, ckpt)].max_batch}")
    return found


def apply_limits(space: SearchSpace, found: dict[str, FinderResult], limit_bytes: int) -> SearchSpace:
    """``space`` with the probed limits, and without micro-batches no pair can run."""
    limits = {key: r.max_batch for key, r in found.items()}
    space = dataclasses.replace(space, max_micro_batch=limits)
    largest = max(limits.values(), default=0)
    micro = space.params.get("micro_batch_size")
    for b in micro.choices if micro and micro.choices else ():
        if b > largest:
            space = space.without(
                "micro_batch_size", b,
                f"does not fit in the memory limit of {format_size(limit_bytes)} with any amp/checkpointing "
                f"(largest that fits: {largest})",
            )
    return space
