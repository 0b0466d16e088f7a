"""FLOPs of one training step, counted by torch, and model FLOPs utilisation (MFU).

MFU is the share of the device's measured matmul peak that training really uses: the
model's FLOPs per sample (forward and backward, counted once by
``torch.utils.flop_counter.FlopCounterMode``) times samples per second, over the peak the
hardware profile measured for the dtype the config computes in. Recomputation under
activation checkpointing is not counted: MFU counts the model's work, not the overhead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# The dtype whose matmul peak bounds a config's speed, by ``peak_key``: without autocast,
# matmuls and convolutions run in true fp32 or, under `fp32_precision: tf32`, on TF32
# tensor cores (``knobs.fp32_precision`` sets both, so neither runs in the other mode).
_PEAK_DTYPE = {"off": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}
PEAK_KEYS = tuple(_PEAK_DTYPE)


def peak_key(amp: str, fp32_precision: str = "ieee") -> str:
    """Which peak a config computes at: its autocast dtype, else "tf32" or "off" (fp32)."""
    if amp != "off":
        return amp
    return "tf32" if fp32_precision == "tf32" else "off"


def train_step_flops(model: torch.nn.Module, compute_loss: Callable[[torch.nn.Module], torch.Tensor]) -> int:
    """FLOPs of one forward and backward pass: ``compute_loss(model)`` returns the loss.

    The gradients it leaves are cleared. Only operations torch has FLOP formulas for
    count (matmuls, convolutions, attention); elementwise work is not included, as is
    usual for MFU.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        compute_loss(model).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_tflops(measured: dict[str, Any], device: str, key: str) -> float | None:
    """The profile's measured matmul peak (TFLOP/s) for ``key`` (``peak_key``) on
    ``device``, or None when the profile has no figure for it (a CPU has no tf32)."""
    key = f"{'cuda' if device == 'cuda' else 'cpu'}_matmul_{_PEAK_DTYPE[key]}_tflops"
    value = measured.get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def mfu(samples_per_s: float | None, flops_per_sample: float | None, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak; None when any figure is missing."""
    if not samples_per_s or not flops_per_sample or not peak:
        return None
    return samples_per_s * flops_per_sample / (peak * 1e12)
