"""Gating: remove the choices a machine or a model cannot use, or uses to no benefit."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.search.space import SearchSpace


@dataclass(frozen=True)
class Facts:
    """What gating needs to know about the machine and the model."""

    device_type: str  # "cuda" or "cpu"
    amp_blocked: dict[str, str | None]  # amp mode -> reason it is ruled out, or None
    logical_cores: int
    has_blocks: bool  # the model has blocks to checkpoint
    train_size: int  # samples in the training set


def gate(space: SearchSpace, facts: Facts) -> SearchSpace:
    """A copy of ``space`` without the choices ``facts`` rule out, each with its reason."""
    for mode, reason in facts.amp_blocked.items():
        if reason:
            space = space.without("amp", mode, reason)
    if facts.device_type != "cuda":
        space = space.without(
            "pin_memory", True, "no GPU: pinned memory only speeds copies from host to GPU"
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
