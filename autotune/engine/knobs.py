"""The training knobs as objects: a knob that is off is an object that does nothing.

AMP is an autocast context (``nullcontext`` when off) plus a GradScaler that is enabled
only for fp16; the LR schedule is a pure function of the step; activation checkpointing
wraps the forward of the chosen blocks; the CPU thread count and cuDNN's benchmark mode
are contexts that restore the setting after the run; channels_last is a memory format
(``preserve_format`` when off); compile returns the model itself when off, and its clock
times nothing.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
import types
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device_type: str, amp: str) -> ContextManager[Any]:
    """The autocast context for ``amp`` on ``device_type``; a no-op when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[amp])


INIT_SCALE = 2.0**16  # the fp16 loss scale a run starts from


def grad_scaler(device_type: str, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device_type, init_scale=INIT_SCALE, enabled=amp == "fp16")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer ``step`` (0-based) under ``cosine``.

    Linear warmup over ``warmup_steps`` reaching 1.0 at the last warmup step, then cosine
    decay from 1.0 towards 0 over the remaining steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


ONECYCLE_RISE = 0.3  # share of the steps spent rising to the peak
ONECYCLE_START = 1 / 25  # the first step's LR, as a share of the peak
ONECYCLE_END = ONECYCLE_START / 1e4  # the last step's LR, as a share of the peak


def one_cycle(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer ``step`` (0-based) under ``onecycle``.

    One cycle (Smith & Topin 2017; torch's OneCycleLR with its defaults, LR only): from
    1/25 at step 0 up to 1.0 at the last of the first 30% of the steps, then down to
    1/25e4 at the last step, cosine-shaped both ways. ``warmup_steps`` is ignored: the
    rise is the warmup.
    """
    peak = ONECYCLE_RISE * total_steps - 1
    if step < peak:
        return _cosine_between(ONECYCLE_START, 1.0, step / peak)
    span = total_steps - 1 - peak
    return _cosine_between(1.0, ONECYCLE_END, min(1.0, (step - peak) / span) if span > 0 else 1.0)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1, along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULE_FACTORS: dict[str, Callable[[int, int, int], float]] = {
    "cosine": warmup_cosine,
    "onecycle": one_cycle,
}


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the peak LR at optimizer ``step`` (0-based) under ``schedule``."""
    return SCHEDULE_FACTORS[schedule](step, warmup_steps, total_steps)


def warmup_steps_for(warmup_fraction: float, total_steps: int) -> int:
    """Warmup length in optimizer steps for a fraction of ``total_steps``."""
    return int(round(warmup_fraction * total_steps))


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_fraction: float,
    total_steps: int,
    schedule: str = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that follows ``lr_factor`` over ``total_steps`` optimizer steps."""
    warmup = warmup_steps_for(warmup_fraction, total_steps)
    factor = SCHEDULE_FACTORS[schedule]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: factor(step, warmup, total_steps)
    )


def enable_checkpointing(blocks: list[torch.nn.Module]) -> None:
    """Recompute each block's activations in backward instead of storing them.

    Uses the non-reentrant implementation, which works when the block's inputs need no
    grad and keeps the RNG state, so dropout matches the run without checkpointing.
    """
    for block in blocks:
        forward = block.forward

        def checkpointed(self: torch.nn.Module, *args: Any, _f: Callable = forward, **kw: Any) -> Any:
            if not torch.is_grad_enabled():
                return _f(*args, **kw)
            return checkpoint(_f, *args, use_reentrant=False, **kw)

        block.forward = types.MethodType(checkpointed, block)


def cpu_threads(device_type: str, threads: int) -> ContextManager[Any]:
    """torch's intra-op thread count for a run on the CPU, restored when the run ends;
    a no-op for 0 (torch's default) or on a GPU (where the CPU only feeds it)."""
    if threads == 0 or device_type != "cpu":
        return contextlib.nullcontext()
    return _setting(torch.get_num_threads, torch.set_num_threads, threads)


def cudnn_benchmark(enabled: bool) -> ContextManager[Any]:
    """``torch.backends.cudnn.benchmark`` on for a run, restored when it ends; cuDNN then
    times its conv algorithms for each new input shape. Harmless without cuDNN."""
    if not enabled:
        return contextlib.nullcontext()
    backend = torch.backends.cudnn
    return _setting(lambda: backend.benchmark, lambda on: setattr(backend, "benchmark", on), True)


@contextlib.contextmanager
def _setting(get: Callable[[], Any], put: Callable[[Any], None], value: Any) -> Iterator[None]:
    """Set a process-wide setting to ``value`` inside the block, and back afterwards."""
    before = get()
    put(value)
    try:
        yield
    finally:
        put(before)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of the model's 4-D weights: channels_last, or left as it is."""
    return torch.channels_last if channels_last else torch.preserve_format


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)``, or the model itself when compile is off. The compiled
    wrapper shares the model's parameters; save the plain model's ``state_dict``."""
    return torch.compile(model) if enabled else model


class CompileClock:
    """The one-off cost of ``torch.compile``, estimated from the first optimizer steps.

    Compiling happens in the first step (forward and backward graphs), so the estimate is
    the first step's time less the median time of the ``later`` steps after it; with no
    later step, the whole first step. Each timed step waits for the device. A recompile
    later on (a new input shape, such as an epoch's short last batch) is not counted: on
    the development CPU that left about a third to a half of the compile time out. When
    off it times nothing and reads 0.
    """

    def __init__(self, sync: Callable[[], None], enabled: bool, later: int = 3) -> None:
        self.sync, self.enabled, self.later = sync, enabled, later
        self.times: list[float] = []  # seconds of the first steps

    def step(self, started: float) -> None:
        """Record the step that began at ``started`` (``time.perf_counter()``)."""
        if self.enabled and len(self.times) <= self.later:
            self.sync()
            self.times.append(time.perf_counter() - started)

    @property
    def seconds(self) -> float:
        if not self.times:
            return 0.0
        later = self.times[1:]
        return max(0.0, self.times[0] - (statistics.median(later) if later else 0.0))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a generator for the DataLoader's order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
