"""What the search needs to know about the model itself, measured once before a new study.

- FLOPs per training sample (``engine.flops``), for every trial's MFU.
- The gradient noise scale B_noise (``engine.gns``), for every trial's statistical
  efficiency and goodput. The model trains at its reference config (the model file's
  ``BASE``) through the run's warmup, to move off the initial weights, and then each step
  first measures per-example gradient norms (on Adam-type
  optimizers, of gradients preconditioned by Adam's second moments, the direction Adam
  steps in). The observations give the estimate and its 95% interval
  (``engine.gns.interval``).
- A branched check (``search.branches``): from the initial weights and a fresh optimizer,
  short runs at the reference batch and at ``CHECK_FACTOR`` times it, each with the full
  run's warmup at its batch, count the samples each needs for the same loss drop,
  ``CHECK_REPEATS`` times with different data orders, over a window long enough for the
  loss to move (``branches.READABLE``). The noise scale goodput uses is
  fitted to that ratio (``objective.decide_noise_scale``); the estimate above is reported
  beside it.

All are properties of the model and its data, not of a config, so one measurement serves
every trial and all trials are scored on the same scale.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch

from autotune.config import TrainConfig
from autotune.engine import knobs
from autotune.engine.data import batch_len, to_device
from autotune.engine.flops import train_step_flops
from autotune.engine.gns import (
    GroupNorms,
    Interval,
    NoiseScale,
    adam_preconditioner,
    group_norms,
    interval,
    per_example_norms,
)
from autotune.engine.loop import pick_device
from autotune.errors import TrialError
from autotune.search import branches
from autotune.search.objective import CHECK_FACTOR
from autotune.model.task import Task, load_task

BLOCKS = 5  # blocks of observations for the interval
CHECK_SECONDS = 120.0  # the check's time: past it, goodput equals throughput (within measure_isolated's 180 s)
CHECK_REPEATS = 3  # the check's repeats, with different data orders: their median is used, their spread says whether it is readable


class Observer:
    """Per-example gradient norms of one batch with ``torch.func``, falling back to groups of
    examples (one backward pass each) for models it cannot map over; remembers which."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.method = "per-example"
        self.fallback_reason: str | None = None

    def observe(self, model: torch.nn.Module, inputs: Any, target: Any, preconditioner: Any) -> GroupNorms:
        if self.method == "per-example":
            try:
                return per_example_norms(model, self.task.call, self.task.loss, inputs, target, preconditioner)
            except Exception as exc:  # noqa: BLE001 - any model torch.func cannot map goes to the fallback
                self.method = "groups"
                self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                for p in model.parameters():
                    p.grad = None
        return group_norms(model, lambda m, x, y: self.task.loss(self.task.call(m, x), y), inputs, target, preconditioner)


@dataclass
class Reference:
    """The reference config trained for a few seconds: the model and optimizer where they got
    to, and the noise scale observed on the way."""

    task: Task
    cfg: TrainConfig
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: int
    flops_per_sample: float
    estimate: Interval
    noise: dict[str, Any]


def reach(model_path: str, config: dict[str, Any], max_seconds: float = 15.0, observe_steps: int = 100,
          observe_from: str = "warmup") -> Reference:
    """Train the reference config ``config`` at its batch (at most half the training set)
    and observe per-example gradient norms on up to ``observe_steps`` steps within
    ``max_seconds``. With ``observe_from="warmup"`` the observations start after the run's
    warmup (or half of ``max_seconds``): the noise scale of the run where most of its steps
    are. With "start" they start at the initial weights: the noise scale of the first
    steps, which decides what a larger batch costs to reach an early target."""
    if observe_from not in ("warmup", "start"):
        raise ValueError(f"observe_from must be 'warmup' or 'start', got {observe_from!r}")
    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_dict(config, source="model statistics config")
    device = pick_device()
    generator = knobs.seed_everything(cfg.seed)
    train_set = task.datasets()[0]
    batch = max(2, min(cfg.base_batch_size, len(train_set) // 2))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch, shuffle=True, drop_last=True, collate_fn=task.collate, generator=generator
    )
    model = task.build_model().to(device).train()
    optimizer = task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    batches = (to_device(b, device) for b in itertools.chain.from_iterable(itertools.repeat(loader)))
    first = next(batches)
    flops = train_step_flops(model, lambda m: task.loss(task.call(m, first[0]), first[1]))
    batches = itertools.chain([first], batches)
    observer = Observer(task)
    observations: list[NoiseScale] = []
    preconditioned = False
    run_steps = max(1, cfg.epochs * (len(train_set) // batch))
    warmup_steps = max(1, round(cfg.warmup * run_steps))
    steps = 0
    start = time.perf_counter()
    while len(observations) < observe_steps and time.perf_counter() - start < max_seconds:
        inputs, target = next(batches)
        if observe_from == "start" or steps >= warmup_steps or time.perf_counter() - start >= max_seconds / 2:
            scales = adam_preconditioner(optimizer)
            preconditioned = scales is not None
            one = NoiseScale()
            observer.observe(model, inputs, target, scales).add_to(one)
            observations.append(one)
        branches.train_step(model, optimizer, task, inputs, target, grad_clip=cfg.grad_clip)
        steps += 1
    estimate = interval(observations, BLOCKS)
    noise = {
        **estimate.to_dict(),
        "method": observer.method,
        "method_fallback_reason": observer.fallback_reason,
        "preconditioned": preconditioned,
        "observations": len(observations),
        "steps_before": steps - len(observations),
        "observed_from": observe_from,
        "batch": batch,
        "run_fraction": steps / run_steps,
        "check": None,
    }
    return Reference(task, cfg, device, model, optimizer, batch, flops / batch_len(first[1]), estimate, noise)


def measure(model_path: str, config: dict[str, Any], max_seconds: float = 15.0, observe_steps: int = 100,
            check: bool = True, check_steps: int = branches.STEPS) -> dict[str, Any]:
    """FLOPs per sample, the gradient noise scale with its interval, and the branched check;
    runs in a fresh process.

    ``config`` is the reference config (the model file's ``BASE``), trained by ``reach``; the
    check then runs from the initial weights (``start_point``) at its batch and at
    ``CHECK_FACTOR`` times it, ``check_steps`` large-batch steps each, ``CHECK_REPEATS`` times.
    """
    start = time.perf_counter()
    ref = reach(model_path, config, max_seconds, observe_steps)
    if check:
        ref.noise["check"] = branches.check(
            ref.task, ref.cfg, start_point(ref), [ref.batch, CHECK_FACTOR * ref.batch], steps=check_steps,
            repeats=CHECK_REPEATS, device=ref.device, warmup=True, seconds=CHECK_SECONDS,
        ).to_dict()
    return {
        "flops_per_sample": ref.flops_per_sample,
        "noise": ref.noise,
        "seconds": time.perf_counter() - start,
        "device": str(ref.device),
    }


def start_point(ref: Reference) -> branches.Point:
    """Where the full run starts: the model as its seed builds it, with a fresh optimizer."""
    torch.manual_seed(ref.cfg.seed)
    model = ref.task.build_model().to(ref.device)
    return branches.Point.of(model, ref.task.make_optimizer(model.parameters(), ref.cfg.lr, ref.cfg.weight_decay))


def measure_isolated(task: Task, timeout_s: float = 180.0) -> dict[str, Any]:
    """``measure`` for the model file's reference config in a fresh process."""
    from autotune.search.worker import run_isolated

    cfg = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size)
    outcome = run_isolated(measure, {"model_path": str(task.path), "config": cfg.to_dict()}, timeout_s)
    if not outcome.ok:
        raise TrialError(
            f"Measuring the model's FLOPs and gradient noise scale failed: {outcome.reason}",
            hint="This runs the model file's reference config (BASE) for a few seconds; run a trial with --debug to see the error.",
        )
    return outcome.value
