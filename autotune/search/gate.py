"""Gating: remove the choices a machine or a model cannot use, or uses to no benefit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autotune.search.space import SearchSpace


@dataclass(frozen=True)
class Facts:
    """What gating needs to know about the machine and the model."""

    device_type: str  # "cuda" or "cpu"
    amp_blocked: dict[str, str | None]  # amp mode -> reason it is ruled out, or None
    logical_cores: int
    has_blocks: bool  # the model has blocks to checkpoint
    train_size: int  # samples in the training set
    has_conv: bool = False  # the model has a torch.nn.Conv2d (see ``has_conv2d``)
    cuda_capability: tuple[int, int] | None = None  # the GPU's compute capability (major, minor)
    # The implementations the model's optimizer offers (``knobs.optimizer_impls``).
    optimizer_impls: tuple[str, ...] = ("auto", "plain", "foreach", "fused")
    optimizer_name: str = "AdamW"


def has_conv2d(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution, the layer channels_last speeds up."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


# Knobs that only pay off on a GPU: fixed elsewhere to the value that does nothing, with
# the reason. (channels_last is not one: on the development CPU it made the digits CNN's
# steps 10-30% faster.)
GPU_ONLY: dict[str, tuple[object, str]] = {
    "cudnn_benchmark": (False, "no GPU: cuDNN is NVIDIA's GPU library, so on the CPU the setting does nothing"),
    "compile": ("off", (
        "no GPU: on the CPU, compiling the example models took 15-25 s (measured), as long as "
        "their whole final runs or longer, for steps at most 1.2x faster"
    )),
    "fp32_precision": ("ieee", "no GPU: TF32 is a mode of NVIDIA's tensor cores (sm_80 and later)"),
    "optimizer_impl": ("auto", (
        "no GPU: foreach and fused optimizers save a GPU's kernel launches (one per parameter and op "
        "in the plain loop); torch's own pick is kept on the CPU"
    )),
    "expandable_segments": (False, "no GPU: a setting of the CUDA caching allocator"),
}
TF32_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores


def gpu_facts(device_type: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The ``Facts`` fields for the GPU knobs: the compute capability of the device this
    process sees as cuda:0 (None on the CPU), and the implementations ``optimizer`` (one
    the model file's optimizer hook built) offers."""
    from autotune.engine.knobs import optimizer_impls

    capability = tuple(torch.cuda.get_device_capability(0)) if device_type == "cuda" else None
    return {"cuda_capability": capability, "optimizer_impls": optimizer_impls(optimizer),
            "optimizer_name": type(optimizer).__name__}


def gate(space: SearchSpace, facts: Facts) -> SearchSpace:
    """A copy of ``space`` without the choices ``facts`` rule out, each with its reason."""
    for mode, reason in facts.amp_blocked.items():
        if reason:
            space = space.without("amp", mode, reason)
    if facts.device_type != "cuda":
        space = space.without(
            "pin_memory", True, "no GPU: pinned memory only speeds copies from host to GPU"
        )
        for name, (value, reason) in GPU_ONLY.items():
            space = space.fixed_to(name, value, reason)
    else:
        space = _gate_gpu(space, facts)
    if not facts.has_conv:
        space = space.fixed_to(
            "channels_last", False, "the model has no Conv2d layers: channels_last only changes how conv inputs are laid out"
        )
    if not facts.has_blocks:
        space = space.without(
            "checkpointing",
            True,
            "the model has no repeated blocks to checkpoint "
            "(define checkpoint_blocks(model) to name them)",
        )
    return _gate_numbers(space, facts)


def _gate_gpu(space: SearchSpace, facts: Facts) -> SearchSpace:
    """The GPU knobs this GPU or the model's optimizer cannot use."""
    cap = facts.cuda_capability
    if cap is not None and tuple(cap) < TF32_CAPABILITY:
        space = space.without("fp32_precision", "tf32", f"TF32 needs compute capability "
                              f"{TF32_CAPABILITY[0]}.{TF32_CAPABILITY[1]} or later; this GPU is {cap[0]}.{cap[1]}")
    for impl in _choices(space, "optimizer_impl"):
        if impl not in facts.optimizer_impls:
            space = space.without("optimizer_impl", impl, f"the model's optimizer ({facts.optimizer_name}) has no "
                                  f"{impl} implementation (it takes no `{'foreach' if impl == 'plain' else impl}` argument)")
    return space


def _gate_numbers(space: SearchSpace, facts: Facts) -> SearchSpace:
    if facts.device_type == "cuda":
        space = space.fixed_to(
            "cpu_threads", 0, "not searched on a GPU: the CPU only feeds it, so torch's default thread count is kept"
        )
    for n in _choices(space, "cpu_threads"):
        if n > facts.logical_cores:
            space = space.without(
                "cpu_threads", n, f"more threads than the {facts.logical_cores} logical cores"
            )
    for n in _choices(space, "num_workers"):
        if n > facts.logical_cores:
            space = space.without(
                "num_workers", n, f"more DataLoader workers than the {facts.logical_cores} logical cores"
            )
    for b in _choices(space, "micro_batch_size"):
        if b > facts.train_size:
            space = space.without(
                "micro_batch_size", b, f"larger than the training set ({facts.train_size} samples)"
            )
    # persistent_workers needs no gate: TrainConfig.from_base turns it off without workers.
    return space


def _choices(space: SearchSpace, name: str) -> tuple:
    param = space.params.get(name)
    return param.choices if param is not None and param.choices is not None else ()
