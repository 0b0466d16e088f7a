"""Statistical efficiency measured directly: short runs branched from one point of training.

From one model and optimizer state, each branch trains at its own effective batch as a
full run at that batch would (one micro-batch a step where it fits in memory, the
learning rate scaled by the config's rule, the gradient clipped as the config clips it)
for the same number of samples, and evaluates the loss on a fixed set of training
examples as it goes. The samples each branch needs for one loss drop, over those the
reference batch needs, is the sample cost of the larger batch: what goodput's
statistical efficiency predicts as eff(reference) / eff(batch).
Samples are counted, not timed, so the measurement holds on a noisy machine.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_map

from autotune.config import TrainConfig, scaled_lr
from autotune.engine.data import batch_len, to_device
from autotune.engine.knobs import seed_everything
from autotune.model.task import Task

STEPS = 24  # optimizer steps of the largest branch
EVALS = 12  # evaluations per branch, evenly spaced in samples
EVAL_SAMPLES = 512  # training examples evaluated at each point
FRACTION = 0.75  # the loss drop timed, of the smallest any branch made: deep in the window, short of its flat end
MIN_DROP = 0.01  # below this fraction of the starting loss, no drop is readable
READABLE = 0.25  # the smallest drop, as a fraction of the starting loss, that a window must show
MAX_WINDOWS = 3  # windows tried, each twice the last: ``steps``, 2x and 4x


@dataclass
class Point:
    """A point of training to branch from: copies of the model's and optimizer's state."""

    model: dict[str, Any]
    optimizer: dict[str, Any]

    @classmethod
    def of(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Point:
        return cls(copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))


@dataclass
class Check:
    """Samples to one loss drop at each effective batch, per repeat, and their ratios to the
    first (reference) batch. ``ratios`` is None where no drop could be read."""

    batches: list[int]
    samples: int
    curves: list[dict[int, list[tuple[int, float]]]] = field(default_factory=list)  # per repeat: batch -> curve
    targets: list[float | None] = field(default_factory=list)
    to_target: list[dict[int, float | None]] = field(default_factory=list)
    reason: str | None = None  # why no ratio could be read

    @property
    def ratios(self) -> dict[int, float] | None:
        """Median over repeats of samples(batch) / samples(reference batch), per batch."""
        if len(self.batches) < 2:
            return None
        per_batch: dict[int, list[float]] = {b: [] for b in self.batches[1:]}
        for reached in self.to_target:
            ref = reached.get(self.batches[0])
            for b in self.batches[1:]:
                if ref and reached.get(b):
                    per_batch[b].append(reached[b] / ref)  # type: ignore[operator]
        if any(not v for v in per_batch.values()):
            return None
        return {b: statistics.median(v) for b, v in per_batch.items()}

    def per_repeat(self) -> list[float | None]:
        """Each repeat's samples at the largest batch over the reference batch's (None
        where that repeat read no drop)."""
        ref, large = self.batches[0], self.batches[-1]
        return [r[large] / r[ref] if r.get(ref) and r.get(large) else None for r in self.to_target]

    def to_dict(self) -> dict[str, Any]:
        ratios = self.ratios
        return {
            "batches": self.batches,
            "samples": self.samples,
            "targets": self.targets,
            "samples_to_target": [{str(b): s for b, s in r.items()} for r in self.to_target],
            "ratios": {str(b): v for b, v in ratios.items()} if ratios else None,
            "per_repeat": self.per_repeat(),
            "reason": self.reason if ratios is None else None,
            "curves": [{str(b): c for b, c in rep.items()} for rep in self.curves],
        }


def backward(model: torch.nn.Module, task: Task, inputs: Any, target: Any, accumulation: int = 1) -> None:
    """The gradient of a batch's mean loss into ``.grad``, as ``accumulation`` equal
    micro-batches, so memory stays that of one micro-batch."""
    size = batch_len(target) // accumulation
    for j in range(accumulation):
        part = slice(j * size, (j + 1) * size)
        (task.loss(task.call(model, tree_map(lambda t: t[part], inputs)), target[part]) / accumulation).backward()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, task: Task, inputs: Any, target: Any,
               accumulation: int = 1, grad_clip: float = 0.0) -> None:
    """One optimizer step on a batch, split into ``accumulation`` equal micro-batches, its
    gradient clipped to norm ``grad_clip`` first (0: not clipped), as the training loop does."""
    backward(model, task, inputs, target, accumulation)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def eval_set(task: Task, device: torch.device, size: int = EVAL_SAMPLES) -> list[tuple[Any, Any]]:
    """``size`` training examples spread over the training set, as batches on ``device``;
    the same examples for every branch. The training loss is what the noise scale is about;
    a validation loss also moves with overfitting, which small models reach within a branch."""
    data = task.datasets()[0]
    step = max(1, len(data) // size)
    subset = torch.utils.data.Subset(data, range(0, len(data), step)[:size])
    loader = torch.utils.data.DataLoader(subset, batch_size=128, collate_fn=task.collate)
    return [to_device(b, device) for b in loader]


@torch.no_grad()
def eval_loss(task: Task, model: torch.nn.Module, batches: list[tuple[Any, Any]]) -> float:
    """Mean loss over ``batches`` in eval mode (the model is put back in training mode)."""
    model.eval()
    total, n = 0.0, 0
    for inputs, target in batches:
        k = int(target.shape[0])
        total += task.loss(task.call(model, inputs), target).item() * k
        n += k
    model.train()
    return total / n


class OutOfTime(Exception):
    """A branch passed its deadline (``time.monotonic``)."""


def branch(task: Task, cfg: TrainConfig, point: Point, batch: int, micro: int, samples: int,
           evals: list[tuple[Any, Any]], seed: int, device: torch.device, warmup_steps: int = 0, *,
           deadline: float | None = None) -> list[tuple[int, float]]:
    """Train ``samples`` samples at effective batch ``batch`` from ``point`` (micro-batches of
    ``micro``); the loss on ``evals`` at the start and after each ``samples / EVALS``.
    Raises ``OutOfTime`` after a step that ends past ``deadline``."""
    seed_everything(seed)  # the data order's, and any random augmentation's (numpy, python) draws
    model = task.build_model().to(device)
    model.load_state_dict(point.model)
    model.train()
    optimizer = task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    optimizer.load_state_dict(copy.deepcopy(point.optimizer))  # loading aliases the state's tensors, which steps move
    lr = scaled_lr(cfg.base_lr, cfg.base_batch_size, batch, cfg.lr_rule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    train_set = task.datasets()[0]
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=task.collate, generator=torch.Generator().manual_seed(seed))
    remeasure_second_moment(task, model, optimizer, loader, micro, device)
    model.load_state_dict(point.model)  # the passes above moved BatchNorm's running statistics
    curve = [(0, eval_loss(task, model, evals))]
    every = samples / EVALS
    seen, next_eval = 0, every
    while seen < samples:
        for inputs, target in loader:
            inputs, target = to_device((inputs, target), device)
            if warmup_steps:
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, (seen // batch + 1) / warmup_steps)
            train_step(model, optimizer, task, inputs, target, max(1, batch // micro), cfg.grad_clip)
            seen += batch
            if deadline is not None and time.monotonic() > deadline:
                raise OutOfTime
            if seen >= next_eval - 1e-9 or seen >= samples:
                curve.append((seen, eval_loss(task, model, evals)))
                while next_eval <= seen:
                    next_eval += every
            if seen >= samples:
                break
    return curve


def fitting_branch(task: Task, cfg: TrainConfig, point: Point, batch: int, reference: int, samples: int,
                   evals: list[tuple[Any, Any]], seed: int, device: torch.device, warmup_steps: int = 0, *,
                   deadline: float | None = None) -> list[tuple[int, float]]:
    """``branch`` with each step's batch as one micro-batch, as a full run at that batch
    trains it (BatchNorm normalises over the micro-batch a step sees, so accumulating small
    ones trains another model); where that runs out of memory, as micro-batches of the
    ``reference`` batch, accumulated."""
    try:
        return branch(task, cfg, point, batch, batch, samples, evals, seed, device, warmup_steps, deadline=deadline)
    except torch.cuda.OutOfMemoryError:
        if batch == reference:
            raise
        torch.cuda.empty_cache()
        return branch(task, cfg, point, batch, reference, samples, evals, seed, device, warmup_steps, deadline=deadline)


SECOND_MOMENT_BATCHES = 8  # batches over which a branch re-measures Adam's second moment


def remeasure_second_moment(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            loader: torch.utils.data.DataLoader, micro: int, device: torch.device) -> None:
    """Set an Adam-type optimizer's second moment to the mean squared gradient at the
    branch's batch, over ``SECOND_MOMENT_BATCHES`` batches, without moving the parameters.

    The state copied from the point was averaged over gradients of the reference batch,
    whose noise is larger than a larger batch's: left as it is, a larger batch's steps are
    divided by too large a sqrt(v) for the next thousand or so steps (beta2 = 0.999), and a
    short branch measures that transient instead of the batch's efficiency. A full run at
    that batch never sees it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    states = [optimizer.state.get(p, {}) for p in params]
    if not any("exp_avg_sq" in st for st in states):
        return
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    seen = 0
    for inputs, target in loader:
        inputs, target = to_device((inputs, target), device)
        backward(model, task, inputs, target, max(1, batch_len(target) // micro))
        for total, p in zip(sums, params):
            if p.grad is not None:
                total.add_(p.grad.detach().float().pow(2))
            p.grad = None
        seen += 1
        if seen >= SECOND_MOMENT_BATCHES:
            break
    betas = {id(p): g["betas"] for g in optimizer.param_groups if "betas" in g for p in g["params"]}
    for total, p, st in zip(sums, params, states):
        if "exp_avg_sq" not in st or id(p) not in betas:
            continue
        step = float(st["step"])
        st["exp_avg_sq"].copy_((total / seen) * (1.0 - betas[id(p)][1] ** step))


def smooth(curve: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Each evaluation averaged with its neighbours (the ends kept), so one lucky
    evaluation does not decide when a loss was reached."""
    if len(curve) < 3:
        return list(curve)
    inner = [(curve[i][0], (curve[i - 1][1] + curve[i][1] + curve[i + 1][1]) / 3) for i in range(1, len(curve) - 1)]
    return [curve[0], *inner, curve[-1]]


def samples_to(curve: list[tuple[int, float]], target: float) -> float | None:
    """Samples until the loss first reaches ``target``, interpolated between evaluations."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            if l0 <= target:
                return float(s0)
            return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return None


def _warmup_steps(cfg: TrainConfig, batch: int, train_size: int) -> int:
    """The full run's warmup steps at effective batch ``batch``."""
    return max(1, round(cfg.warmup * cfg.epochs * max(1, train_size // batch)))


def check(task: Task, cfg: TrainConfig, point: Point, batches: list[int], steps: int = STEPS,
          repeats: int = 1, device: torch.device | None = None, warmup: bool = False, seed_offset: int = 0,
          windows: int = MAX_WINDOWS, seconds: float | None = None) -> Check:
    """Branch from ``point`` at each of ``batches`` (the first is the reference) for
    ``steps`` steps of the largest, ``repeats`` times with different data orders; the
    samples each needs for ``FRACTION`` of the smallest loss drop any branch of a repeat
    made, on curves smoothed over neighbouring evaluations.

    The window must show a real drop: where the first repeat's smallest drop is under
    ``READABLE`` of the starting loss (a model on a plateau, whose first loss drop is noise
    more than progress), it is tried again at twice the steps, up to ``windows`` windows,
    and the repeats after it use the window it settled on.

    With ``warmup`` (for a point at the start of training), each branch warms its learning
    rate up linearly over the steps the full run at its batch would (``cfg.warmup`` of
    them). Repeat ``r`` draws its data order and random augmentations from seed
    ``cfg.seed + 1 + seed_offset + r``: checks with other offsets are independent of this one.

    With ``seconds``, a check still running after that long stops and reads nothing (its
    ``reason`` says so): a model too slow to check in time gets no ratio, not a failed run."""
    device = device or torch.device("cpu")
    train_set = task.datasets()[0]
    batches = [b for b in batches if b <= len(train_set)]
    result = Check(batches, steps * max(batches) if batches else 0)
    if len(batches) < 2:
        result.reason = "the training set is smaller than the check's large batch"
        return result
    evals = eval_set(task, device)
    deadline = time.monotonic() + seconds if seconds is not None else None
    try:
        _repeats(task, cfg, point, result, evals, repeats, device, warmup, seed_offset, windows, deadline)
    except OutOfTime:
        result.to_target.clear()
        result.targets.clear()
        result.reason = f"the check ran out of its {seconds:g} s before reading every repeat"
    return result


def _repeats(task: Task, cfg: TrainConfig, point: Point, result: Check, evals: list[tuple[Any, Any]], repeats: int,
             device: torch.device, warmup: bool, seed_offset: int, windows: int, deadline: float | None) -> None:
    """``check``'s repeats, into ``result``."""
    batches, micro, train_size = result.batches, result.batches[0], len(task.datasets()[0])
    for r in range(repeats):
        tries = windows if r == 0 else 1
        for attempt in range(tries):
            curves = {b: fitting_branch(task, cfg, point, b, micro, result.samples, evals, cfg.seed + 1 + seed_offset + r,
                                        device, _warmup_steps(cfg, b, train_size) if warmup else 0, deadline=deadline)
                      for b in batches}
            smoothed = {b: smooth(c) for b, c in curves.items()}
            start = max(c[0][1] for c in curves.values())
            drop = min(start - min(loss for _, loss in c) for c in smoothed.values())
            if drop >= READABLE * abs(start) or attempt == tries - 1:
                break
            result.samples *= 2
        result.curves.append(curves)
        if drop <= MIN_DROP * abs(start):
            result.targets.append(None)
            result.to_target.append({b: None for b in batches})
            result.reason = (f"the loss did not drop by {MIN_DROP:.0%} in {result.samples:,} samples at every batch "
                             f"(smallest drop {drop:.4g} from {start:.4g})")
            continue
        target = start - FRACTION * drop
        result.targets.append(target)
        result.to_target.append({b: samples_to(c, target) for b, c in smoothed.items()})
