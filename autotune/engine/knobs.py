"""The training knobs as objects: a knob that is off is an object that does nothing.

AMP is an autocast context (``nullcontext`` when off) plus a GradScaler that is enabled
only for fp16; the LR schedule is a pure function of the step; activation checkpointing
wraps the forward of the chosen blocks.
"""

from __future__ import annotations

import contextlib
import math
import random
import types
from typing import Any, Callable, ContextManager

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


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer ``step`` (0-based).

    Linear warmup over ``warmup_steps`` reaching 1.0 at the last warmup step, then cosine
    decay from 1.0 towards 0 over the remaining steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(warmup_fraction: float, total_steps: int) -> int:
    """Warmup length in optimizer steps for a fraction of ``total_steps``."""
    return int(round(warmup_fraction * total_steps))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, warmup_fraction: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that follows ``lr_factor`` over ``total_steps`` optimizer steps."""
    warmup = warmup_steps_for(warmup_fraction, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps)
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


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a generator for the DataLoader's order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
