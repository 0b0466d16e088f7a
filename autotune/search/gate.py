"""Gating: remove the choices a machine or a model cannot use, or uses to no benefit."""

from __future__ import annotations

from dataclasses import dataclass

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


def has_conv2d(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution, the layer channels_last speeds up."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


# Knobs that only pay off on a GPU: fixed to off elsewhere, with the reason. (channels_last
# is not one: on the development CPU it made the digits CNN's steps 10-30% faster.)
GPU_ONLY = {
    "cudnn_benchmark": "no GPU: cuDNN is NVIDIA's GPU library, so on the CPU the setting does nothing",
    "compile": (
        "no GPU: on the CPU, compiling the example models took 15-25 s (measured), as long as "
        "their whole final runs or longer, for steps at most 1.2x faster"
    ),
}


def gate(space: SearchSpace, facts: Facts) -> SearchSpace:
    """A copy of ``space`` without the choices ``facts`` rule out, each with its reason."""
    for mode, reason in facts.amp_blocked.items():
        if reason:
            space = space.without("amp", mode, reason)
    if facts.device_type != "cuda":
        space = space.without(
            "pin_memory", True, "no GPU: pinned memory only speeds copies from host to GPU"
        )
        for name, reason in GPU_ONLY.items():
            space = space.fixed_to(name, False, reason)
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
