"""The largest micro-batch that trains under a memory limit, found with few probes.

A probe trains two full steps (forward, backward, optimizer step, so the optimizer state
is allocated) of one micro-batch size in a fresh process under a real memory cap, on the
worst-case batch (the training items with the most elements). ``find_max_batch`` drives
the probes: peak memory is close to linear in the batch size, so after two probes it
fits a line, jumps to the predicted limit and confirms it with a short bisection that
the line keeps guiding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from autotune.model.calling import item_input
from autotune.config import TrainConfig
from autotune.engine import knobs
from autotune.engine.data import to_device
from autotune.engine.memory import cap_memory, memory_used_bytes, reraise_at_cap, vm_bytes
from autotune.errors import TrialError
from autotune.model.task import Task, load_task


@dataclass(frozen=True)
class Probe:
    """One probe: did ``batch`` train, and how much memory did it use (bytes)."""

    batch: int
    ok: bool  # trained without running out of memory
    peak_bytes: int | None  # memory used above the baseline; None after an OOM
    fits: bool  # ok and within the limit less the headroom


@dataclass
class FinderResult:
    max_batch: int  # largest batch that fits with the headroom; 0 when none does
    probes: list[Probe] = field(default_factory=list)
    # Memory model: peak_bytes ~ intercept_bytes + slope_bytes_per_sample * batch.
    intercept_bytes: float | None = None
    slope_bytes_per_sample: float | None = None
    exact: bool = False  # max_batch fits and max_batch + granularity does not (or is past `high`)
    inferred_from: str | None = None  # not probed: follows from this pair's result

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "probes": [p.__dict__ for p in self.probes],
            "n_probes": len(self.probes),
            "intercept_bytes": self.intercept_bytes,
            "slope_bytes_per_sample": self.slope_bytes_per_sample,
            "exact": self.exact,
            "inferred_from": self.inferred_from,
        }


def _fit(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares line through (batch, peak) points; None with fewer than 2 batches."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / var
    return mean_p - slope * mean_b, slope


class _Search:
    """The state of one search: the largest batch known to fit, the smallest known not to."""

    def __init__(self, probe: Callable[[int], Probe], budget: float, low: int, high: int, g: int, rel_tol: float) -> None:
        self.probe_fn, self.budget, self.g, self.rel_tol = probe, budget, g, rel_tol
        self.low, self.high = low, high
        self.lo: int | None = None  # largest batch known to fit
        self.hi: int | None = None  # smallest batch known not to fit
        self.probes: list[Probe] = []
        self.nudged = False  # the last probe was one step off a bound

    def run(self, b: int) -> Probe:
        p = self.probe_fn(b)
        self.probes.append(p)
        if p.fits:
            self.lo = max(self.lo or 0, b)
        else:
            self.hi = b if self.hi is None else min(self.hi, b)
        return p

    def line(self) -> tuple[float, float] | None:
        return _fit([(p.batch, p.peak_bytes) for p in self.probes if p.peak_bytes is not None])

    def predicted(self) -> int | None:
        """Where the line through the two largest measured batches reaches the budget:
        the curve's local slope near the limit, not a fit over the whole range."""
        measured = sorted((p.batch, p.peak_bytes) for p in self.probes if p.peak_bytes is not None)
        fit = _fit(measured[-2:])
        if fit is None or fit[1] <= 0:
            return None
        return int((self.budget - fit[0]) / fit[1]) // self.g * self.g

    def done(self) -> bool:
        if self.lo is None:
            return self.hi is not None and self.hi <= self.low
        return self.lo >= self.high or (self.hi is not None and self.hi - self.lo <= self.step(self.lo))

    def step(self, batch: int) -> int:
        """The resolution near ``batch``: the granularity, or ``rel_tol`` of the batch."""
        return max(self.g, int(self.rel_tol * batch) // self.g * self.g)

    def bounds(self) -> tuple[int, int]:
        """The open interval the answer's successor lies in: (lo, hi)."""
        lo = self.lo if self.lo is not None else self.low - self.g
        hi = self.hi if self.hi is not None else self.high + self.g
        return lo, hi

    def next_batch(self, bisect: bool) -> tuple[int, bool]:
        """The next batch to probe, and whether it is a nudge.

        The line's predicted limit when it lies inside the interval. A prediction at or
        below the largest fitting batch is checked one step above it (a nudge), one at
        or above the smallest failing batch one step below it: a good line closes the
        interval that way in one probe. The midpoint when there is no line, when
        ``bisect`` is asked for, or when the last probe was a nudge already (the line is
        off here: creeping a step at a time would cost more than halving).
        """
        lo, hi = self.bounds()
        guess = None if bisect else self.predicted()
        nudge = guess is not None and (guess <= lo or guess >= hi)
        if guess is None or (nudge and self.nudged):
            guess, nudge = (lo + hi) // 2 // self.g * self.g, False
        elif guess <= lo:
            guess = lo + self.step(lo)
        elif guess >= hi:
            guess = self.high if self.hi is None else hi - self.step(hi)
        return min(max(guess, lo + self.g), hi - self.g), nudge


def find_max_batch(
    probe: Callable[[int], Probe],
    limit_bytes: int,
    headroom: float = 0.1,
    low: int = 1,
    high: int = 4096,
    granularity: int = 1,
    rel_tol: float = 0.0,
) -> FinderResult:
    """The largest multiple of ``granularity`` in [low, high] whose probe fits.

    ``probe(batch)`` trains one batch size under the real limit and reports whether it
    ran and its peak; a batch "fits" when it ran and its peak stays within
    ``limit_bytes * (1 - headroom)``. Order: the smallest batch, a small multiple of it,
    then steps guided by the line through the two largest measured peaks, with a bisection
    step after any guided one that overshot without halving the interval. The search ends when the largest
    fitting and the smallest failing batch are one granularity apart, or ``rel_tol`` of
    the batch apart (0.02: the answer is within 2% of the true largest).
    """
    g = granularity
    low, high = max(g, low // g * g), max(g, high // g * g)
    s = _Search(probe, limit_bytes * (1 - headroom), low, high, g, rel_tol)
    s.run(low)
    if s.lo is not None and low < high:
        # A second small batch gives the line its slope; where the line says everything
        # fits, the next probe is the largest batch itself.
        s.run(min(high, max(4 * low, low + 4 * g) // g * g))
    stalled = 0
    while not s.done():
        lo, hi = s.bounds()
        batch, s.nudged = s.next_batch(bisect=stalled >= 1)
        last = s.run(batch)
        new_lo, new_hi = s.bounds()
        # A guided probe that overshot without halving the interval: bisect once.
        overshot = not last.fits and (new_hi - new_lo) > (hi - lo) // 2
        stalled = 0 if stalled >= 1 or not overshot else stalled + 1
    fit = s.line()
    return FinderResult(
        max_batch=s.lo or 0,
        probes=s.probes,
        intercept_bytes=fit[0] if fit else None,
        slope_bytes_per_sample=fit[1] if fit else None,
        exact=s.done(),
    )


# ------------------------------------------------------------------ the probe process


SCAN_LIMIT = 4096  # items whose size is read to find the largest; beyond, an even sample


def worst_case_indices(dataset: Any, batch: int, scan_limit: int = SCAN_LIMIT) -> list[int]:
    """Indices of the ``batch`` items with the most input elements, repeated if the
    dataset is smaller than the batch (memory depends on the shapes, not the values).

    A dataset larger than ``scan_limit`` is sampled evenly (first and last item
    included) rather than read whole: a probe must not cost a pass over a large dataset.
    """
    n = len(dataset)
    candidates = range(n) if n <= scan_limit else sorted({round(k * (n - 1) / (scan_limit - 1)) for k in range(scan_limit)})
    sizes = sorted(((_numel(item_input(dataset[i])), i) for i in candidates), reverse=True)
    order = [i for _, i in sizes]
    return [order[k % len(order)] for k in range(batch)]


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, dict):
        return sum(_numel(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_numel(v) for v in x)
    return 1


def _batch(task: Task, indices: list[int]) -> Any:
    train_set = task.datasets()[0]
    collate = task.collate or torch.utils.data.default_collate
    return collate([train_set[i] for i in indices])


def prime_imports(task: Task, cfg: TrainConfig) -> None:
    """Build and step a throwaway optimizer before a memory cap is set: the first one
    imports many modules (about 70 MiB here) that would otherwise count against the cap
    and have nothing to do with the batch size."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = task.make_optimizer([param], cfg.lr, cfg.weight_decay)
    param.grad = torch.zeros(1)
    optimizer.step()
    torch.ones(64, 64) @ torch.ones(64, 64)  # start the thread pool too


def probe_batch(model_path: str, config: dict[str, Any], batch: int, limit_bytes: int, headroom: float) -> dict[str, Any]:
    """Train two steps of ``batch`` samples under a cap of ``limit_bytes``; runs in a fresh
    process (``worker.run_isolated``). Raises on OOM, which the caller reads as "too big"."""
    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_dict(config, source="probe config")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    indices = worst_case_indices(task.datasets()[0], batch)
    prime_imports(task, cfg)
    # The allocator's setting must be in place before the cap starts CUDA.
    with knobs.expandable_segments(device.type, cfg.expandable_segments):
        baseline = cap_memory(limit_bytes, device)
        peak_before = vm_bytes("VmPeak") if device.type == "cpu" else None
        try:
            # The items are fetched and collated under the cap, as a trial's DataLoader does.
            sampled = _two_steps(task, cfg, device, lambda: _batch(task, indices))
        except Exception as exc:
            reraise_at_cap(exc, device, baseline, limit_bytes)
            raise
    used = memory_used_bytes(device, baseline)
    if peak_before is not None and baseline + used <= peak_before:
        used = sampled - baseline  # the step set no new peak: use what was sampled
    return {"peak_bytes": int(used), "fits": used <= limit_bytes * (1 - headroom)}


PROBE_INIT_SCALE = 1.0  # the probe's fp16 loss scale: low, so that its gradients rarely overflow


def _two_steps(task: Task, cfg: TrainConfig, device: torch.device, make_batch: Callable[[], Any]) -> int:
    """Two optimizer steps, each on a freshly collated batch (the previous one is still
    alive while the next is built, as in a training loop); returns the largest sampled
    virtual size (CPU) or 0.

    The second step must find the optimizer's state allocated (AdamW's two moments: as
    much memory again as the weights twice), as every step of a run after its first
    does. With fp16, a loss scaler skips the optimizer step when the gradients overflow,
    which at a run's starting scale (2**16) can happen to both steps; so the probe's
    scaler starts at ``PROBE_INIT_SCALE`` (a probe measures memory, not numerics), and a
    first step skipped all the same is followed by ``_allocate_state``.
    """
    model = task.build_model()
    if cfg.checkpointing:
        knobs.enable_checkpointing(task.blocks(model))
    model.to(device).train()
    optimizer = knobs.set_optimizer_impl(task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay),
                                         cfg.optimizer_impl)
    scaler = torch.amp.GradScaler(device.type, init_scale=PROBE_INIT_SCALE, enabled=cfg.amp == "fp16")
    sample = (lambda: vm_bytes("VmSize")) if device.type == "cpu" else (lambda: 0)
    highest = 0
    for step in range(2):
        inputs, target = to_device(make_batch(), device)
        with knobs.autocast(device.type, cfg.amp):
            loss = task.loss(task.call(model, inputs), target)
        highest = max(highest, sample())
        scaler.scale(loss).backward()
        highest = max(highest, sample())
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        highest = max(highest, sample())
        optimizer.zero_grad(set_to_none=True)
        if step == 0 and scaler.get_scale() < scale:  # the scaler skipped the step: inf/NaN gradients
            _allocate_state(optimizer)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrialError(f"the loss was {value} while probing a micro-batch")
    return highest


def _allocate_state(optimizer: torch.optim.Optimizer) -> None:
    """Step ``optimizer`` once on zero gradients, so that it allocates its state (which
    it does at its first step) although no real step went through; its parameters may
    move (weight decay): a probe's weights do not matter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def isolated_prober(task: Task, cfg: TrainConfig, limit_bytes: int, headroom: float, timeout_s: float = 120.0) -> Callable[[int], Probe]:
    """A ``probe(batch)`` that runs ``probe_batch`` in a fresh process each time.

    Out of memory means "too big"; any other failure is the model's own error and is
    raised as such, naming the batch size it happened at.
    """
    from autotune.search.worker import run_isolated

    def probe(batch: int) -> Probe:
        kwargs = {"model_path": str(task.path), "config": cfg.to_dict(), "batch": batch,
                  "limit_bytes": limit_bytes, "headroom": headroom}
        outcome = run_isolated(probe_batch, kwargs, timeout_s)
        if outcome.ok:
            return Probe(batch, True, outcome.value["peak_bytes"], outcome.value["fits"])
        if outcome.status == "oom":
            return Probe(batch, False, None, False)
        raise TrialError(
            f"The model failed while probing a micro-batch of {batch} "
            f"(amp {cfg.amp}, checkpointing {cfg.checkpointing}): {outcome.reason}",
            hint="This is an error in the model or its data, not a memory limit; run a trial with --debug to see it.",
        )

    return probe
