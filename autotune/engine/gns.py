"""The gradient noise scale, and the statistical efficiency of a batch size it implies.

The "simple" noise scale of McCandlish et al. (2018), B_noise = tr(Sigma) / |G|^2, where
G is the true gradient and Sigma the covariance of one sample's gradient. A gradient
averaged over B independent samples has E[|g_B|^2] = |G|^2 + tr(Sigma) / B, so the squared
norms measured at two batch sizes give unbiased estimates of |G|^2 and tr(Sigma). One
pair of measurements is very noisy (either estimate can come out negative); the two are
averaged over many pairs separately, and B_noise is the ratio of the averages.

With it, a batch of B needs (1 + B / B_noise) times the fewest examples to reach a given
loss, so relative to a reference batch B0 its efficiency is
(1 + B0 / B_noise) / (1 + B / B_noise), and goodput = samples/s x efficiency is the rate in
reference-batch samples per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn


@dataclass
class NoiseScale:
    """A running estimate of |G|^2, tr(Sigma) and B_noise from pairs of gradient norms.

    Only sums are kept, so two estimates pool by adding them (see ``merge``).
    """

    n: int = 0  # pairs of measurements added
    sum_grad_sq: float = 0.0  # sum over pairs of the |G|^2 estimate
    sum_trace_cov: float = 0.0  # sum over pairs of the tr(Sigma) estimate

    def add(self, small_sq: float, small_batch: int, big_sq: float, big_batch: int) -> None:
        """Add one pair: squared gradient norm ``small_sq`` measured on a batch of
        ``small_batch`` samples and ``big_sq`` on a batch of ``big_batch`` samples."""
        if small_batch < 1 or big_batch <= small_batch:
            raise ValueError(
                "`1 <= small_batch < big_batch` must hold, "
                f"but got (small_batch={small_batch}, big_batch={big_batch})."
            )
        self.n += 1
        self.sum_grad_sq += (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
        self.sum_trace_cov += (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)

    @property
    def grad_sq(self) -> float | None:
        """Mean estimate of |G|^2, the squared norm of the true gradient; None before any pair."""
        return self.sum_grad_sq / self.n if self.n else None

    @property
    def trace_cov(self) -> float | None:
        """Mean estimate of tr(Sigma), one sample's gradient variance; None before any pair."""
        return self.sum_trace_cov / self.n if self.n else None

    @property
    def b_noise(self) -> float | None:
        """tr(Sigma) / |G|^2 in samples; None until both averaged estimates are positive."""
        if not self.n or self.sum_grad_sq <= 0 or self.sum_trace_cov <= 0:
            return None
        return self.sum_trace_cov / self.sum_grad_sq

    def merge(self, other: NoiseScale) -> NoiseScale:
        """A new estimate from the pairs of both (for pooling trials)."""
        return NoiseScale(
            n=self.n + other.n,
            sum_grad_sq=self.sum_grad_sq + other.sum_grad_sq,
            sum_trace_cov=self.sum_trace_cov + other.sum_trace_cov,
        )

    def to_dict(self) -> dict[str, float | int | None]:
        """The estimate as plain numbers (JSON-friendly); None where undefined."""
        return {"n": self.n, "grad_sq": self.grad_sq, "trace_cov": self.trace_cov, "b_noise": self.b_noise}


def efficiency(batch: int, reference_batch: int, b_noise: float | None) -> float:
    """Examples needed at ``reference_batch`` over examples needed at ``batch``.

    1.0 at the reference batch, above 1 for smaller batches, below 1 for larger ones; 1.0
    for every batch when there is no estimate (``b_noise`` None: goodput falls back to
    raw throughput).
    """
    if batch < 1 or reference_batch < 1:
        raise ValueError(
            f"Batch sizes must be positive, but got (batch={batch}, reference_batch={reference_batch})."
        )
    if b_noise is None:
        return 1.0
    if not b_noise > 0:
        raise ValueError(f"`b_noise` must be positive or None, but got {b_noise}.")
    return (1.0 + reference_batch / b_noise) / (1.0 + batch / b_noise)


def grad_sq_norm(parameters: Iterable[torch.Tensor]) -> float:
    """Sum of the squared gradient entries of ``parameters`` (in float64); those without a
    gradient are skipped, and no gradient at all gives 0.0."""
    sums = [p.grad.detach().double().pow(2).sum() for p in parameters if p.grad is not None]
    return torch.stack(sums).sum().item() if sums else 0.0


def observe_micro_batches(
    model: nn.Module,
    compute_loss: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor],
    micro_batches: list[tuple[Any, torch.Tensor]],
    estimate: NoiseScale,
) -> None:
    """Add one pair to ``estimate`` from k >= 2 micro-batches of b samples each.

    Each micro-batch's gradient g_i is computed on its own; the mean of |g_i|^2 is the
    measurement at batch b and |mean of g_i|^2 the one at batch k*b. ``compute_loss``
    returns the mean loss over a micro-batch; b is the first dimension of the target.
    No optimizer steps; the parameters' ``.grad`` is None afterwards, whatever it was
    before. Costs one extra copy of the gradients.
    """
    sizes = [target.shape[0] for _, target in micro_batches]
    if len(sizes) < 2 or len(set(sizes)) != 1:
        raise ValueError(f"Need at least 2 micro-batches of one size, but got sizes {sizes}.")
    params = [p for p in model.parameters() if p.requires_grad]
    totals: list[torch.Tensor | None] = [None] * len(params)
    small_sq = 0.0
    for inputs, target in micro_batches:
        for p in params:
            p.grad = None
        compute_loss(model, inputs, target).backward()
        small_sq += grad_sq_norm(params)
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            if totals[i] is None:
                dtype = torch.promote_types(p.grad.dtype, torch.float32)
                totals[i] = p.grad.detach().to(dtype, copy=True)
            else:
                totals[i].add_(p.grad.detach())
    for p in params:
        p.grad = None
    k = len(sizes)
    squares = [(t.double() / k).pow(2).sum() for t in totals if t is not None]
    big_sq = torch.stack(squares).sum().item() if squares else 0.0
    estimate.add(small_sq / k, sizes[0], big_sq, k * sizes[0])
