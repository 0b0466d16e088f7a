"""The training knobs as objects: a knob that is off is an object that does nothing.

AMP is an autocast context (``nullcontext`` when off) plus a GradScaler that is enabled
only for fp16; the LR schedule is a pure function of the step; activation checkpointing
wraps the forward of the chosen blocks; the CPU thread count and cuDNN's benchmark mode
are contexts that restore the setting after the run, as are the GPU's fp32 precision
(TF32 or not) and the caching allocator's expandable segments; channels_last is a memory
format (``preserve_format`` when off); compile returns the model itself when off, and its
clock times nothing; the optimizer's implementation (foreach, fused) is set on its groups.
"""

from __future__ import annotations

import contextlib
import math
import os
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


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile(model)`` in ``mode``, or the model itself when ``mode`` is "off".

    The compiled wrapper shares the model's parameters; save the plain model's
    ``state_dict``. "reduce-overhead" records CUDA graphs, which replay one fixed shape:
    it compiles with ``dynamic=False`` (the training loader drops an epoch's short last
    batch, so every step has the same shape), and each step is marked as a new graph
    iteration (``step_marker``).
    """
    if mode == "off":
        return model
    options: dict[str, Any] = {} if mode == "default" else {"mode": mode}
    if mode == "reduce-overhead":
        options["dynamic"] = False
    return torch.compile(model, **options)


def step_marker(mode: str) -> Callable[[], None]:
    """What to call before each micro-batch's forward: under CUDA graphs (reduce-overhead),
    ``torch.compiler.cudagraph_mark_step_begin`` tells the graph trees that the previous
    step's outputs are no longer needed; otherwise nothing."""
    if mode == "reduce-overhead":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def fp32_precision(device_type: str, precision: str) -> ContextManager[Any]:
    """fp32 matmuls and cuDNN convolutions on a GPU as "ieee" (true fp32) or "tf32"
    (TF32 tensor cores), restored when the run ends; a no-op on the CPU.

    torch's defaults differ by op (matmuls ieee, cuDNN convolutions tf32); this sets both,
    so an "ieee" run is true fp32 throughout and its MFU is against the fp32 peak. Uses the
    per-backend ``fp32_precision`` settings where torch has them (2.9+), else the legacy
    ``allow_tf32`` flags: mixing the two APIs in one process raises.
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    return _precision(precision)


@contextlib.contextmanager
def _precision(precision: str) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        before = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        new_api = True
    except AttributeError:
        before, new_api = (matmul.allow_tf32, cudnn.allow_tf32), False

    def put(values: tuple[Any, Any]) -> None:
        if new_api:
            matmul.fp32_precision, cudnn.conv.fp32_precision = values
        else:
            matmul.allow_tf32, cudnn.allow_tf32 = values

    put((precision, precision) if new_api else (precision == "tf32",) * 2)
    try:
        yield
    finally:
        put(before)


def optimizer_impls(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """The implementations ``optimizer`` lets a caller choose: those of torch's optimizers
    that take ``foreach`` and ``fused`` arguments (their ``defaults`` hold the keys)."""
    keys = optimizer.defaults
    impls = ["auto"]
    if "foreach" in keys or "fused" in keys:
        impls.append("plain")
    impls += [name for name in ("foreach", "fused") if name in keys]
    return tuple(impls)


def set_optimizer_impl(optimizer: torch.optim.Optimizer, impl: str) -> torch.optim.Optimizer:
    """Switch ``optimizer`` to ``impl`` (see ``TrainConfig.optimizer_impl``) in place.

    torch's optimizers read ``foreach`` and ``fused`` from each parameter group at every
    step, so setting them on the groups of a built optimizer works for the default AdamW
    and for one a model file builds alike. "auto" leaves torch's own choice (foreach on
    CUDA). ValueError when the optimizer has no such implementation.
    """
    if impl == "auto":
        return optimizer
    if impl not in optimizer_impls(optimizer):
        raise ValueError(f"{type(optimizer).__name__} has no {impl!r} implementation "
                         f"(it offers: {', '.join(optimizer_impls(optimizer))})")
    for group in optimizer.param_groups:
        for name in ("foreach", "fused"):
            if name in optimizer.defaults:
                group[name] = name == impl
    return optimizer


ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # torch 2.9+ name first


def alloc_conf(current: str | None, expandable: bool) -> str:
    """An allocator setting string (``key:value,key:value``) with ``expandable_segments``
    set to ``expandable``, keeping every other setting of ``current``."""
    kept = [part for part in (current or "").split(",") if part.strip() and
            part.split(":")[0].strip() != "expandable_segments"]
    return ",".join(kept + [f"expandable_segments:{expandable}"])


def expandable_segments(device_type: str, enabled: bool) -> ContextManager[Any]:
    """The CUDA caching allocator's ``expandable_segments`` on for a run; a no-op when off
    or on the CPU.

    Before CUDA starts in a process, the setting goes into the allocator's environment
    variable (the one the user set, else ``PYTORCH_CUDA_ALLOC_CONF``, which every torch
    since 2.0 reads) with the user's other settings kept; once CUDA has started, through
    ``torch.cuda.memory._set_allocator_settings``. Either way it is put back afterwards.
    """
    if not enabled or device_type != "cuda":
        return contextlib.nullcontext()
    if torch.cuda.is_initialized():
        setter = torch.cuda.memory._set_allocator_settings
        return _setting(lambda: "expandable_segments:False", setter, "expandable_segments:True")
    var = next((v for v in ALLOC_CONF_VARS if v in os.environ), ALLOC_CONF_VARS[1])
    return _env(var, alloc_conf(os.environ.get(var), True))


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """The environment variable ``name`` set to ``value`` inside the block only."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class CompileClock:
    """The one-off cost of ``torch.compile``, estimated from the first optimizer steps.

    Compiling happens in the first step (forward and backward graphs), so the estimate is
    the first step's time less the median time of the ``later`` steps after it; with no
    later step, the whole first step. Each timed step waits for the device. A recompile
    later on (a new input shape) would not be counted; the training loader drops an
    epoch's short last batch so that there is none. CUDA graphs (reduce-overhead) are
    recorded in the first steps after the compile, inside the ``later`` steps' window only
    when ``later`` covers them (3 does). When off it times nothing and reads 0.
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
    def first_step_s(self) -> float:
        """The first step's time (the compile and that step), 0 before it or when off."""
        return self.times[0] if self.times else 0.0

    @property
    def seconds(self) -> float:
        if not self.times:
            return 0.0
        later = self.times[1:]
        return max(0.0, self.times[0] - (statistics.median(later) if later else 0.0))


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed python, numpy and torch (the CPU's and every GPU's generators); returns a
    generator for the DataLoader's order.

    The process-wide generators get rank ``rank``'s own seed
    (``distributed.rank_seed``: ``seed`` itself on rank 0), so the ranks of a
    multi-process run draw different dropout masks and random transforms; the order
    generator gets ``seed`` on every rank, since the ranks shard one shared order.
    """
    from autotune.engine.distributed import rank_seed

    own = rank_seed(seed, rank)
    random.seed(own)
    np.random.seed(own % 2**32)
    torch.manual_seed(own)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
