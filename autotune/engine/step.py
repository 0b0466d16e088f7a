"""One optimizer step, and the live objects of a training run that it works on.

``prepare`` builds a run's model, optimizer, loss scaler, schedule and loaders from a
config; ``optimizer_step`` accumulates a group of micro-batches into one step. The loop
that drives them is ``loop.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from autotune.config import TrainConfig
from autotune.engine import distributed, knobs
from autotune.engine.data import batch_len, make_loader, to_device
from autotune.engine.distributed import SINGLE, Dist
from autotune.engine.measure import ThroughputMeter
from autotune.errors import TrialError
from autotune.model.task import Task


class NonFiniteLossError(TrialError):
    """The training loss became NaN or infinite."""


@dataclass
class Run:
    """The live objects of one training run, built fresh by ``prepare``."""

    model: torch.nn.Module  # what the training steps call: ``module``, compiled under `compile`
    module: torch.nn.Module  # the plain model: evaluated, and its weights are the result
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    total_steps: int


def prepare(task: Task, cfg: TrainConfig, device: torch.device, max_steps: int | None, eval_in_process: bool = False,
            d: Dist = SINGLE) -> Run:
    """A run's live objects for ``cfg``, built fresh (seeded): the model (with checkpointing
    and its memory format), optimizer, loss scaler, LR schedule and loaders. ``max_steps``
    caps the schedule's length for a short run."""
    generator = knobs.seed_everything(cfg.seed)  # the same initial weights and data order on every rank
    module = task.build_model()
    if cfg.checkpointing:
        knobs.enable_checkpointing(task.blocks(module))
    module.to(device, memory_format=knobs.memory_format(cfg.channels_last))
    optimizer = knobs.set_optimizer_impl(task.make_optimizer(module.parameters(), cfg.lr, cfg.weight_decay),
                                         cfg.optimizer_impl)
    train_set, val_set = task.datasets()
    if d.rank:  # the model and data are built alike on every rank; from here on the others
        knobs.seed_everything(cfg.seed, d.rank)  # draw dropout masks of their own (rank 0 goes on as one process)
    train_loader = make_loader(train_set, cfg, device, train=True, collate_fn=task.collate, generator=generator, dist=d)
    # A short run's few evaluation batches are loaded in this process: starting the
    # config's workers again for them took longer than the evaluation itself (1-2 s).
    val_cfg = dataclasses.replace(cfg, num_workers=0, persistent_workers=False) if eval_in_process else cfg
    val_loader = make_loader(val_set, val_cfg, device, train=False, collate_fn=task.collate, dist=d)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulation_steps)
    total = steps_per_epoch * cfg.epochs
    if max_steps is not None:
        total = min(total, max_steps)
    return Run(
        model=knobs.compiled(distributed.wrap(module, d, device), cfg.compile),
        module=module,
        optimizer=optimizer,
        scaler=knobs.grad_scaler(device.type, cfg.amp),
        scheduler=knobs.lr_scheduler(optimizer, cfg.warmup, total, cfg.schedule),
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
    )


def groups(loader: torch.utils.data.DataLoader, k: int) -> Iterator[tuple[list[Any], float]]:
    """Micro-batches in groups of ``k`` (the last group of an epoch may be shorter), each
    with the seconds spent waiting for the loader to hand it over (the first group's wait
    includes starting the iterator: its workers, without persistent ones)."""
    start = time.perf_counter()
    it = iter(loader)
    while True:
        group = list(itertools.islice(it, k))
        if not group:
            return
        yield group, time.perf_counter() - start
        start = time.perf_counter()


def optimizer_step(run: Run, task: Task, cfg: TrainConfig, group: list[Any], device: torch.device) -> tuple[torch.Tensor, int]:
    """Forward/backward every micro-batch of ``group``, then one optimizer step.

    Each micro-batch's mean loss is weighted by its share of the group's samples, so the
    accumulated gradient equals that of one batch holding the whole group, a short last
    group included. Returns the group's summed loss (on the device) and its sample count.
    """
    sizes = [batch_len(target) for _, target in group]
    total = sum(sizes)
    loss_sum = torch.zeros((), device=device)
    non_blocking = cfg.pin_memory and device.type == "cuda"
    mark_step = knobs.step_marker(cfg.compile)
    for i, ((inputs, target), size) in enumerate(zip(group, sizes)):
        inputs = to_device(inputs, device, non_blocking, cfg.channels_last)
        target = to_device(target, device, non_blocking)
        with distributed.no_sync(run.model, last=i == len(group) - 1):
            mark_step()
            with knobs.autocast(device.type, cfg.amp):
                loss = task.loss(task.call(run.model, inputs), target)
            run.scaler.scale(loss * (size / total)).backward()
        loss_sum += loss.detach().float() * size
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return loss_sum, total


def timed_step(run: Run, task: Task, cfg: TrainConfig, group: list[Any], device: torch.device, waited: float, meter: ThroughputMeter | None, clock: knobs.CompileClock) -> tuple[torch.Tensor, int]:
    """``optimizer_step``, told to the throughput meter (when there is one) and the clock."""
    if meter is not None:
        meter.waited(waited)
    started = time.perf_counter()
    loss_sum, n = optimizer_step(run, task, cfg, group, device)
    clock.step(started)
    if meter is not None:
        meter.step(n)
    return loss_sum, n


def check_finite(loss_sum: torch.Tensor, samples: int, step: int) -> float:
    """The mean loss of ``samples`` from their summed loss; NonFiniteLossError if NaN or inf."""
    value = float(loss_sum) / max(samples, 1)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss became {value} at optimizer step {step}")
    return value


def skipped_steps(scaler: torch.amp.GradScaler) -> int:
    """Optimizer steps fp16's loss scaler skipped (inf/NaN gradients) in a short run.

    Every skip halves the scale and it only grows back after ``growth_interval`` (2,000)
    clean steps, so within a shorter run the skips are log2(initial / current scale); read
    once at the end, so no step waits for the device.
    """
    if not scaler.is_enabled():
        return 0
    return max(0, round(math.log2(knobs.INIT_SCALE / scaler.get_scale())))
