"""The gradient noise scale, how it is estimated, and the statistical efficiency it implies.

The "simple" noise scale of McCandlish et al. (2018), B_noise = tr(Sigma) / |G|^2, where
G is the true gradient and Sigma the covariance of one sample's gradient. A gradient
averaged over B independent samples has E[|g_B|^2] = |G|^2 + tr(Sigma) / B, so squared
norms measured at two batch sizes give unbiased estimates of |G|^2 and tr(Sigma).

Here the two sizes are one example and the whole batch: per-example gradients from
``torch.func`` (``per_example_norms``), whose spread gives tr(Sigma) with B - 1 degrees of
freedom per batch, far less variance than a few micro-batches give (Gray et al., 2024).
Models ``torch.func`` cannot map over one example (BatchNorm in training mode) use groups
of examples instead (``group_norms``). For Adam-type optimizers the gradients are first
divided by Adam's sqrt(v_hat) + eps (``adam_preconditioner``): that is the direction Adam
steps in, and its noise is what limits Adam's batch scaling. The terms are averaged over
many batches separately and B_noise is the ratio of the averages; consecutive blocks of
batches give its 95% interval (``interval``).

With it, a batch of B needs (1 + B / B_noise) times the fewest examples to reach a given
loss, so relative to a reference batch B0 its efficiency is
(1 + B0 / B_noise) / (1 + B / B_noise), and goodput = samples/s x efficiency is the rate in
reference-batch samples per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

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


class _Calling(nn.Module):
    """``call(model, inputs)`` as a module, so ``torch.func.functional_call`` can run the
    model's own calling convention with substituted parameters."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self._call = call

    def forward(self, inputs: Any) -> Any:
        return self._call(self.model, inputs)


MAX_EXAMPLES = 64  # examples per observation: per-example gradients of a larger batch add little
CHUNK_BYTES = 256 << 20  # per-example gradients held at once


def adam_preconditioner(optimizer: torch.optim.Optimizer) -> dict[torch.Tensor, torch.Tensor] | None:
    """1 / (sqrt(v_hat) + eps) per parameter, from an Adam-type optimizer's second-moment
    state (``exp_avg_sq``, bias-corrected); None when the optimizer keeps no such state or
    has not stepped yet. Dividing a gradient by sqrt(v_hat) is the direction Adam moves in,
    so the noise scale of preconditioned gradients is the one that governs its batch
    scaling."""
    scales: dict[torch.Tensor, torch.Tensor] = {}
    for group in optimizer.param_groups:
        betas, eps = group.get("betas"), group.get("eps")
        if betas is None or eps is None:
            return None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state or "step" not in state:
                continue
            step = float(state["step"])
            if step < 1:
                continue
            v_hat = state["exp_avg_sq"].detach().float() / (1.0 - betas[1] ** step)
            scales[p] = 1.0 / (v_hat.sqrt() + eps)
    return scales or None


@dataclass
class GroupNorms:
    """Squared norms of the gradients of J groups of ``size`` examples each (one example
    per group when per-example gradients are available): ``sum_sq`` = sum_j |g_j|^2 and
    ``mean_sq`` = |mean_j g_j|^2. Their spread gives tr(Sigma) with J - 1 degrees of
    freedom per observation, against 3 for four micro-batches."""

    size: int
    groups: int
    sum_sq: float
    mean_sq: float

    def add_to(self, estimate: NoiseScale) -> None:
        estimate.add(self.sum_sq / self.groups, self.size, self.mean_sq, self.size * self.groups)


def _scaled_sq(grads: dict[str, torch.Tensor], scales: dict[str, torch.Tensor] | None, batched: bool) -> torch.Tensor:
    """Squared norm of each gradient (each row when ``batched``), after the preconditioner."""
    total = None
    for name, g in grads.items():
        g = g.double()
        if scales is not None and name in scales:
            g = g * scales[name].double()
        sq = g.pow(2).flatten(1).sum(1) if batched else g.pow(2).sum()
        total = sq if total is None else total + sq
    return total


def _by_name(named: dict[str, torch.Tensor], preconditioner: dict[torch.Tensor, torch.Tensor] | None
             ) -> dict[str, torch.Tensor] | None:
    """The preconditioner keyed like the gradients it scales."""
    if preconditioner is None:
        return None
    return {k: preconditioner[p] for k, p in named.items() if p in preconditioner}


def _group_norms(size: int, groups: int, sum_sq: float, total: dict[str, torch.Tensor],
                 scales: dict[str, torch.Tensor] | None) -> GroupNorms:
    """``GroupNorms`` from the summed squared norms and the summed gradients of the groups."""
    mean = {k: v / groups for k, v in total.items()}
    return GroupNorms(size, groups, sum_sq, _scaled_sq(mean, scales, batched=False).item())


def per_example_norms(
    model: nn.Module,
    call: Callable[[nn.Module, Any], Any],
    loss: Callable[[Any, torch.Tensor], torch.Tensor],
    inputs: Any,
    target: torch.Tensor,
    preconditioner: dict[torch.Tensor, torch.Tensor] | None = None,
) -> GroupNorms:
    """Per-example gradient norms of one batch with ``torch.func`` (``vmap`` over ``grad``),
    at most ``MAX_EXAMPLES`` examples, in chunks that hold ``CHUNK_BYTES`` of gradients.

    ``call(model, inputs)`` runs the model on a batch and ``loss(output, target)`` gives a
    mean loss. Raises whatever ``torch.func`` raises for models it cannot map over one
    example (BatchNorm in training mode updates its statistics in place, for one);
    ``group_norms`` is the fallback. Dropout draws differently for each example.
    """
    from torch.func import functional_call, grad, vmap
    from torch.utils._pytree import tree_map

    wrapper = _Calling(model, call)
    named = {f"model.{k}": p for k, p in model.named_parameters() if p.requires_grad}
    params = {k: p.detach() for k, p in named.items()}
    buffers = {f"model.{k}": b for k, b in model.named_buffers()}
    scales = _by_name(named, preconditioner)
    n = min(int(target.shape[0]), MAX_EXAMPLES)
    numel = sum(p.numel() for p in params.values())
    chunk = max(1, min(n, CHUNK_BYTES // max(1, 4 * numel)))

    def one_loss(p: dict[str, torch.Tensor], x: Any, y: torch.Tensor) -> torch.Tensor:
        xb = tree_map(lambda t: t.unsqueeze(0), x)
        return loss(functional_call(wrapper, {**p, **buffers}, (xb,)), y.unsqueeze(0))

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0), randomness="different")
    sum_sq = 0.0
    total: dict[str, torch.Tensor] = {}
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        x = tree_map(lambda t: t[part], inputs)
        grads = per_example(params, x, target[part])
        sum_sq += _scaled_sq(grads, scales, batched=True).sum().item()
        for k, g in grads.items():
            s = g.detach().double().sum(0)
            total[k] = s if k not in total else total[k] + s
    return _group_norms(1, n, sum_sq, total, scales)


def group_norms(
    model: nn.Module,
    compute_loss: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor],
    inputs: Any,
    target: torch.Tensor,
    preconditioner: dict[torch.Tensor, torch.Tensor] | None = None,
    groups: int = 16,
) -> GroupNorms:
    """The gradients of ``groups`` groups of at least two examples, one backward pass each:
    for models ``per_example_norms`` cannot map over (BatchNorm needs two examples to
    normalise over). Leaves every ``.grad`` None."""
    from torch.utils._pytree import tree_map

    n = min(int(target.shape[0]), MAX_EXAMPLES)
    groups = max(2, min(groups, n // 2))
    size = n // groups
    if size < 1 or groups < 2:
        raise ValueError(f"A batch of {n} examples is too small for group gradients.")
    params = [p for p in model.parameters() if p.requires_grad]
    named = {str(i): p for i, p in enumerate(params)}
    scales = _by_name(named, preconditioner)
    sum_sq = 0.0
    total: dict[str, torch.Tensor] = {}
    for j in range(groups):
        for p in params:
            p.grad = None
        part = slice(j * size, (j + 1) * size)
        compute_loss(model, tree_map(lambda t: t[part], inputs), target[part]).backward()
        grads = {k: p.grad.detach() for k, p in named.items() if p.grad is not None}
        sum_sq += _scaled_sq(grads, scales, batched=False).item()
        for k, g in grads.items():
            total[k] = g.double() if k not in total else total[k] + g.double()
    for p in params:
        p.grad = None
    return _group_norms(size, groups, sum_sq, total, scales)


@dataclass
class Interval:
    """An estimate of B_noise with a 95% interval from K blocks of observations taken in
    order: the t-interval of log B_noise over the blocks (a block with no positive estimate
    makes the interval unbounded)."""

    estimate: float | None
    low: float | None
    high: float | None
    blocks: list[float | None]

    @property
    def width(self) -> float:
        """high / low; infinite when either end is missing."""
        if not self.low or not self.high:
            return float("inf")
        return self.high / self.low

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "blocks": self.blocks}


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(observations: list[NoiseScale], blocks: int = 5) -> Interval:
    """B_noise pooled over ``observations`` (ratio of sums), and its 95% interval from
    ``blocks`` consecutive blocks of them. Blocks in order also show a trend, which a
    bootstrap of single observations would hide in the interval's width."""
    pooled = NoiseScale()
    for one in observations:
        pooled = pooled.merge(one)
    k = min(blocks, len(observations))
    values: list[float | None] = []
    for i in range(k):
        part = NoiseScale()
        for one in observations[i * len(observations) // k:(i + 1) * len(observations) // k]:
            part = part.merge(one)
        values.append(part.b_noise)
    if k < 2 or any(v is None for v in values) or pooled.b_noise is None:
        return Interval(pooled.b_noise, None, None, values)
    logs = [math.log(v) for v in values]  # type: ignore[arg-type]
    mean = sum(logs) / k
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (k - 1))
    half = T_975.get(k - 1, 1.96) * sd / math.sqrt(k)
    centre = math.log(pooled.b_noise)
    return Interval(pooled.b_noise, math.exp(centre - half), math.exp(centre + half), values)
