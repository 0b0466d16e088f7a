"""The one training loop, used by short trials and by the final run alike.

A trial and the final run differ only in how long they run: a trial stops when its
throughput meter has its windows (or at ``max_steps`` / ``max_seconds``); the final run
goes for ``cfg.epochs`` epochs with progress bars and an evaluation after each epoch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.engine import knobs
from autotune.engine.data import batch_len, make_loader, to_device
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import peak_memory_bytes, reset_peak_memory
from autotune.errors import TrialError
from autotune.task import Task, call_model


class NonFiniteLossError(TrialError):
    """The training loss became NaN or infinite."""


def pick_device() -> torch.device:
    """The first GPU when torch sees one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class EvalResult:
    """Validation metrics; ``y_true``/``y_pred`` are kept for classification reports."""

    loss: float
    accuracy: float | None
    samples: int
    y_true: list[int] = field(default_factory=list, repr=False)
    y_pred: list[int] = field(default_factory=list, repr=False)


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    samples: int  # training samples processed
    seconds: float  # wall time of the loop, evaluation included
    stopped_by: str  # "epochs", "meter", "max_steps" or "max_seconds"
    train_loss: float
    peak_memory_bytes: int
    evaluation: EvalResult
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    throughput: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # never the compiled wrapper
    skipped_steps: int = 0  # fp16 steps the loss scaler skipped (see ``skipped_steps``)
    compile_seconds: float = 0.0  # torch.compile's one-off cost (``knobs.CompileClock``)


@dataclass
class _Run:
    """The live objects of one training run, built fresh by ``_prepare``."""

    model: torch.nn.Module  # what the training steps call: ``module``, compiled under `compile`
    module: torch.nn.Module  # the plain model: evaluated, and its weights are the result
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    total_steps: int


def _prepare(task: Task, cfg: TrainConfig, device: torch.device, max_steps: int | None, eval_in_process: bool = False) -> _Run:
    generator = knobs.seed_everything(cfg.seed)
    module = task.build_model()
    if cfg.checkpointing:
        knobs.enable_checkpointing(task.blocks(module))
    module.to(device, memory_format=knobs.memory_format(cfg.channels_last))
    optimizer = task.make_optimizer(module.parameters(), cfg.lr, cfg.weight_decay)
    train_set, val_set = task.datasets()
    train_loader = make_loader(
        train_set, cfg, device, train=True, collate_fn=task.collate_fn, generator=generator
    )
    # A short run's few evaluation batches are loaded in this process: starting the
    # config's workers again for them took longer than the evaluation itself (1-2 s).
    val_cfg = dataclasses.replace(cfg, num_workers=0, persistent_workers=False) if eval_in_process else cfg
    val_loader = make_loader(val_set, val_cfg, device, train=False, collate_fn=task.collate_fn)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulation_steps)
    total = steps_per_epoch * cfg.epochs
    if max_steps is not None:
        total = min(total, max_steps)
    return _Run(
        model=knobs.compiled(module, cfg.compile),
        module=module,
        optimizer=optimizer,
        scaler=knobs.grad_scaler(device.type, cfg.amp),
        scheduler=knobs.lr_scheduler(optimizer, cfg.warmup, total, cfg.schedule),
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
    )


def _groups(loader: torch.utils.data.DataLoader, k: int) -> Iterator[tuple[list[Any], float]]:
    """Micro-batches in groups of ``k`` (the last group of an epoch may be shorter), each
    with the seconds spent waiting for the loader to hand it over."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        group = list(itertools.islice(it, k))
        if not group:
            return
        yield group, time.perf_counter() - start


def optimizer_step(run: _Run, task: Task, cfg: TrainConfig, group: list[Any], device: torch.device) -> tuple[torch.Tensor, int]:
    """Forward/backward every micro-batch of ``group``, then one optimizer step.

    Each micro-batch's mean loss is weighted by its share of the group's samples, so the
    accumulated gradient equals that of one batch holding the whole group, a short last
    group included. Returns the group's summed loss (on the device) and its sample count.
    """
    sizes = [batch_len(target) for _, target in group]
    total = sum(sizes)
    loss_sum = torch.zeros((), device=device)
    non_blocking = cfg.pin_memory and device.type == "cuda"
    for (inputs, target), size in zip(group, sizes):
        inputs = to_device(inputs, device, non_blocking, cfg.channels_last)
        target = to_device(target, device, non_blocking)
        with knobs.autocast(device.type, cfg.amp):
            loss = task.loss(call_model(run.model, inputs), target)
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


def _timed_step(run: _Run, task: Task, cfg: TrainConfig, group: list[Any], device: torch.device, waited: float, meter: ThroughputMeter | None, clock: knobs.CompileClock) -> tuple[torch.Tensor, int]:
    """``optimizer_step``, told to the throughput meter (when there is one) and the clock."""
    if meter is not None:
        meter.waited(waited)
    started = time.perf_counter()
    loss_sum, n = optimizer_step(run, task, cfg, group, device)
    clock.step(started)
    if meter is not None:
        meter.step(n)
    return loss_sum, n


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, task: Task, device: torch.device, amp: str = "off", max_batches: int | None = None, channels_last: bool = False) -> EvalResult:
    """Mean loss (and accuracy for class logits) over ``loader``, without autograd.

    Under `compile` the loop evaluates its plain module: evaluation is a small share of a
    run, and compiling again for eval mode would add compile time that no trial measures.
    """
    model.eval()
    loss_total, samples, correct = 0.0, 0, 0
    y_true: list[int] = []
    y_pred: list[int] = []
    classification = True
    for inputs, target in itertools.islice(loader, max_batches):
        inputs, target = to_device(inputs, device, channels_last=channels_last), to_device(target, device)
        with knobs.autocast(device.type, amp):
            output = call_model(model, inputs)
            loss = task.loss(output, target)
        n = batch_len(target)
        loss_total += float(loss) * n
        samples += n
        if classification and _is_class_logits(output, target):
            pred = output.argmax(dim=-1)
            correct += int((pred == target).sum())
            y_true.extend(target.tolist())
            y_pred.extend(pred.tolist())
        else:
            classification = False
    model.train()
    return EvalResult(
        loss=loss_total / max(samples, 1),
        accuracy=correct / samples if classification and samples else None,
        samples=samples,
        y_true=y_true if classification else [],
        y_pred=y_pred if classification else [],
    )


def _is_class_logits(output: Any, target: Any) -> bool:
    return (
        isinstance(output, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and output.ndim == 2
        and target.ndim == 1
        and not target.is_floating_point()
    )


def _check_finite(loss_sum: torch.Tensor, samples: int, step: int) -> float:
    value = float(loss_sum) / max(samples, 1)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss became {value} at optimizer step {step}")
    return value


def train(
    task: Task,
    cfg: TrainConfig,
    device: torch.device | None = None,
    *,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    meter: ThroughputMeter | None = None,
    progress: bool = False,
    eval_each_epoch: bool = False,
    max_eval_batches: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a fresh model from ``task`` with ``cfg``; see the module docstring.

    `cpu_threads` and `cudnn_benchmark` are process-wide torch settings: they hold for
    the run (model building and evaluation included) and are restored when it ends.
    """
    device = device or pick_device()
    with knobs.cpu_threads(device.type, cfg.cpu_threads), knobs.cudnn_benchmark(cfg.cudnn_benchmark):
        reset_peak_memory(device)
        run = _prepare(task, cfg, device, max_steps, eval_in_process=max_eval_batches is not None)
        run.model.train()
        clock = knobs.CompileClock(sync_fn(device), enabled=cfg.compile)
        start = time.perf_counter()
        steps = samples = 0
        stopped_by, last_loss, history = "epochs", math.nan, []
        epochs_bar = tqdm(range(cfg.epochs), desc="epochs", unit="epoch", disable=not progress)
        for epoch in epochs_bar:
            epoch_start, epoch_loss, epoch_samples = time.perf_counter(), torch.zeros((), device=device), 0
            steps_bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}", unit="step", leave=False, disable=not progress or not sys.stderr.isatty())
            for group, waited in _groups(run.train_loader, cfg.accumulation_steps):
                loss_sum, n = _timed_step(run, task, cfg, group, device, waited, meter, clock)
                steps, samples = steps + 1, samples + n
                epoch_loss += loss_sum
                epoch_samples += n
                steps_bar.update(1)
                if progress and steps % 10 == 0:
                    steps_bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}")
                stopped_by = _stop_reason(steps, start, meter, max_steps, max_seconds)
                if stopped_by:
                    break
            steps_bar.close()
            last_loss = _check_finite(epoch_loss, epoch_samples, steps)
            row = _epoch_row(epoch, last_loss, epoch_samples, epoch_start, run)
            if eval_each_epoch:
                ev = evaluate(run.module, run.val_loader, task, device, cfg.amp, max_eval_batches, cfg.channels_last)
                row.update(val_loss=ev.loss, val_accuracy=ev.accuracy)
            history.append(row)
            epochs_bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "val_loss", "val_accuracy") and v is not None})
            if on_epoch is not None:
                on_epoch(row)
            if stopped_by:
                break
        stopped_by = stopped_by or "epochs"
        final_eval = evaluate(run.module, run.val_loader, task, device, cfg.amp, max_eval_batches, cfg.channels_last)
    return TrainResult(
        steps=steps,
        samples=samples,
        seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
        train_loss=last_loss,
        peak_memory_bytes=peak_memory_bytes(device),
        evaluation=final_eval,
        history=history,
        throughput=meter.summary() if meter is not None else {},
        model=run.module,
        skipped_steps=skipped_steps(run.scaler),
        compile_seconds=clock.seconds,
    )


def skipped_steps(scaler: torch.amp.GradScaler) -> int:
    """Optimizer steps fp16's loss scaler skipped (inf/NaN gradients) in a short run.

    Every skip halves the scale and it only grows back after ``growth_interval`` (2,000)
    clean steps, so within a shorter run the skips are log2(initial / current scale); read
    once at the end, so no step waits for the device.
    """
    if not scaler.is_enabled():
        return 0
    return max(0, round(math.log2(knobs.INIT_SCALE / scaler.get_scale())))


def _stop_reason(steps: int, start: float, meter: ThroughputMeter | None, max_steps: int | None, max_seconds: float | None) -> str:
    if meter is not None and meter.done:
        return "meter"
    if max_steps is not None and steps >= max_steps:
        return "max_steps"
    if max_seconds is not None and time.perf_counter() - start >= max_seconds:
        return "max_seconds"
    return ""


def _epoch_row(epoch: int, loss: float, samples: int, start: float, run: _Run) -> dict[str, Any]:
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        "train_loss": loss,
        "lr": run.optimizer.param_groups[0]["lr"],
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else None,
    }
