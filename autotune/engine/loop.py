"""The one training loop, used by short trials and by the final run alike.

A trial and the final run differ only in how long they run: a trial stops when its
throughput meter has its windows (or at ``max_steps`` / ``max_seconds``); the final run
goes for ``cfg.epochs`` epochs with progress bars and an evaluation after each epoch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.engine import checkpoint, distributed, knobs
from autotune.engine.checkpoint import BEST, LAST, Checkpointer, Position
from autotune.engine.distributed import SINGLE, Dist
from autotune.engine.evaluation import EvalResult, evaluate
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import peak_memory_bytes, reset_peak_memory
from autotune.engine.step import Run, check_finite, groups, prepare, skipped_steps, timed_step
from autotune.model.task import Task


def pick_device() -> torch.device:
    """The first GPU when torch sees one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    samples: int  # training samples processed
    seconds: float  # wall time of the loop, evaluation included (earlier processes' too when resumed; not ``checks``)
    stopped_by: str  # "epochs", "meter", "max_steps" or "max_seconds"
    train_loss: float
    peak_memory_bytes: int
    evaluation: EvalResult
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    throughput: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # never the compiled wrapper
    skipped_steps: int = 0  # fp16 steps the loss scaler skipped (see ``skipped_steps``)
    compile_seconds: float = 0.0  # torch.compile's one-off cost (``knobs.CompileClock``)
    time_to_target_s: float | None = None  # run time from the first data touch to the target accuracy
    target_epoch: int | None = None  # the epoch whose evaluation first reached it
    resumed_at: dict[str, int] | None = None  # where a resumed run went on from
    processes: int = 1  # ranks that trained together (``--nproc``)
    config: dict[str, Any] = field(default_factory=dict)  # what each rank trained with
    # With ``eval_every_samples``: {samples, train_seconds, val_loss, val_accuracy} per check;
    # train_seconds is training time only (no evaluation, at epoch ends or at checks).
    checks: list[dict[str, Any]] = field(default_factory=list)
    # Where this process's wall time went (``Ledger``), for the final run's accounting.
    ledger: dict[str, float] = field(default_factory=dict)


@dataclass
class Ledger:
    """Where a run's wall time goes, in seconds: ``setup`` (building the model, optimizer
    and loaders), ``epoch_start`` (waiting for each epoch's first micro-batches: the
    DataLoader's iterator, its workers' start and first fetches), ``training`` (the
    optimizer steps and the data waits between them, in steady state, as a trial's windows
    measure them), ``compile`` (torch.compile's one-off cost, taken out of ``training``),
    ``evaluation``, ``checkpoints``, and ``total``; ``data_wait`` is the part of
    ``training`` spent waiting for the DataLoader; ``samples`` counts what this process
    trained (a resumed run's earlier processes are not in the ledger). What none of the
    times holds is the rest (the progress bars, the final sync). ``samples`` over
    ``training`` is the run's achieved training throughput, the figure a trial's
    measurement predicts."""

    setup: float = 0.0
    epoch_start: float = 0.0
    training: float = 0.0
    compile: float = 0.0
    evaluation: float = 0.0
    checkpoints: float = 0.0
    total: float = 0.0
    data_wait: float = 0.0
    samples: int = 0
    first_fetch: float = 0.0  # the first epoch's first fetch: its loader's workers start here
    epochs_started: int = 0

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))


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
    checkpoints: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
    target_accuracy: float | None = None,
    eval_every_samples: int | None = None,
    dist: Dist = SINGLE,
) -> TrainResult:
    """Train a fresh model from ``task`` with ``cfg``; see the module docstring.

    The final run passes ``checkpoints`` (where and how often to save), ``resume`` (a
    checkpoint to go on from, see ``checkpoint``) and ``target_accuracy`` (the time to
    reach it is recorded); a rank of a torchrun group passes its ``dist``
    (``engine.distributed``). `cpu_threads`, `cudnn_benchmark`, `fp32_precision` and
    `expandable_segments` are process-wide torch settings: they hold for the run (model
    building and evaluation included) and are restored when it ends (the allocator's
    setting stays with a CUDA that first started inside the run).

    ``eval_every_samples`` (for benchmarks that time a run to a target accuracy more
    finely than once per epoch) also evaluates whenever the samples trained reach the next
    multiple of it, with the run's clock stopped meanwhile; each such check is a row of
    ``TrainResult.checks``. Not with ``checkpoints`` or ``resume``.
    """
    if eval_every_samples is not None and (eval_every_samples < 1 or checkpoints is not None or resume is not None):
        raise ValueError("eval_every_samples must be a positive count, and not with checkpoints or resume")
    device = device or pick_device()
    called = time.perf_counter()
    with knobs.expandable_segments(device.type, cfg.expandable_segments), \
            knobs.cpu_threads(device.type, cfg.cpu_threads), knobs.cudnn_benchmark(cfg.cudnn_benchmark), \
            knobs.fp32_precision(device.type, cfg.fp32_precision):
        reset_peak_memory(device)
        run = prepare(task, cfg, device, max_steps, eval_in_process=max_eval_batches is not None, d=dist)
        loop = _Loop(run, task, cfg, device, meter, checkpoints, target_accuracy, resume, dist)
        loop.ledger.setup = time.perf_counter() - called
        loop.eval_every = eval_every_samples
        progress = progress and dist.main
        run.model.train()
        stopped_by = ""
        epochs_bar = tqdm(range(loop.pos.epoch, cfg.epochs), desc="epochs", unit="epoch", disable=not progress,
                          initial=loop.pos.epoch, total=cfg.epochs)
        for epoch in epochs_bar:
            stopped_by = loop.run_epoch(progress, max_steps, max_seconds)
            row = loop.end_epoch(epoch, eval_each_epoch, max_eval_batches)
            epochs_bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "val_loss", "val_accuracy") and v is not None})
            if on_epoch is not None:
                on_epoch(row)
            if stopped_by:
                break
        with loop.timing("evaluation"):
            final_eval = evaluate(run.module, run.val_loader, task, device, cfg.amp, max_eval_batches, cfg.channels_last, dist)
    pos = loop.pos
    loop.ledger.compile = loop.clock.seconds
    loop.ledger.training -= loop.clock.seconds
    loop.ledger.total = time.perf_counter() - called
    return TrainResult(
        steps=pos.steps,
        samples=int(distributed.all_sum([pos.samples], dist, device)[0]),
        seconds=loop.elapsed(),
        stopped_by=stopped_by or "epochs",
        train_loss=pos.history[-1]["train_loss"] if pos.history else math.nan,
        peak_memory_bytes=peak_memory_bytes(device),
        evaluation=final_eval,
        history=pos.history,
        throughput=meter.summary() if meter is not None else {},
        model=run.module,
        skipped_steps=skipped_steps(run.scaler),
        compile_seconds=loop.clock.seconds,
        time_to_target_s=pos.time_to_target_s,
        target_epoch=pos.target_epoch,
        resumed_at=loop.resumed_at,
        processes=dist.world,
        config=cfg.to_dict(),
        checks=loop.checks,
        ledger=loop.ledger.to_dict(),
    )


class _Loop:
    """The moving parts of one run's loop: its live objects, where it is (``Position``),
    its clocks, and its checkpoints."""

    def __init__(self, run: Run, task: Task, cfg: TrainConfig, device: torch.device, meter: ThroughputMeter | None,
                 checkpoints: Checkpointer | None, target_accuracy: float | None, resume: dict[str, Any] | None,
                 d: Dist = SINGLE):
        self.run, self.task, self.cfg, self.device, self.meter, self.dist = run, task, cfg, device, meter, d
        self.checkpoints, self.target_accuracy = checkpoints, target_accuracy
        self.clock = knobs.CompileClock(sync_fn(device), enabled=cfg.compile != "off")
        self.pos, self.pending, self.resumed_at = Position(), None, None
        self.eval_every: int | None = None
        self.checks: list[dict[str, Any]] = []
        self.ledger = Ledger()
        if resume is not None:
            self.pos, self.pending = checkpoint.restore(resume, self._stateful(), cfg.to_dict(), d.rank, d.world)
            self.resumed_at = {"epoch": self.pos.epoch, "epoch_batches": self.pos.epoch_batches, "steps": self.pos.steps}
        self.epoch_start: dict[str, torch.Tensor] = {}
        # The run's clock starts at the first data touch; a resumed run adds the time the
        # earlier processes had run up to their last checkpoint.
        self.began = self.process_began = time.perf_counter()
        self.began -= self.pos.elapsed_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    @contextlib.contextmanager
    def timing(self, part: str) -> Iterator[None]:
        """Add the block's wall time to the ledger's ``part``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.ledger, part, getattr(self.ledger, part) + time.perf_counter() - started)

    def _stateful(self) -> dict[str, Any]:
        run = self.run
        return {"model": run.module, "optimizer": run.optimizer, "scaler": run.scaler, "scheduler": run.scheduler}

    def _generators(self) -> dict[str, torch.Generator]:
        loader = self.run.train_loader
        return {"order": loader.sampler.generator, "workers": loader.generator}  # type: ignore[attr-defined]

    def _start_epoch(self) -> Iterator[tuple[list[Any], float]]:
        generators = self._generators()
        if self.pending is not None:  # resuming: the epoch's order as it was drawn, less what was consumed
            for name, state in self.pending.items():
                generators[name].set_state(state)
            self.run.train_loader.sampler.skip(self.pos.epoch_batches * self.cfg.micro_batch_size)  # type: ignore[attr-defined]
            self.pending = None
        else:
            self.pos.epoch_began_s = self.elapsed()
        self.epoch_start = {name: g.get_state() for name, g in generators.items()}
        return groups(self.run.train_loader, self.cfg.accumulation_steps)

    def run_epoch(self, progress: bool, max_steps: int | None, max_seconds: float | None) -> str:
        """Train the rest of the current epoch; returns why it stopped early, or ""."""
        pos, cfg = self.pos, self.cfg
        agree = distributed.agreement(self.dist, self.device)  # ranks agree on checkpoints without a per-step collective
        epoch_loss = torch.tensor(pos.epoch_loss, dtype=torch.float32, device=self.device)
        groups = self._start_epoch()
        bar = tqdm(total=self.run.steps_per_epoch, initial=pos.epoch_batches // cfg.accumulation_steps,
                   desc=f"epoch {pos.epoch + 1}", unit="step", leave=False, disable=not progress or not sys.stderr.isatty())
        stopped_by = ""
        began, first = time.perf_counter(), True
        paused = self.ledger.evaluation + self.ledger.checkpoints  # what the epoch adds to these is not training
        for group, waited in groups:
            if first:  # the epoch's first fetch: the iterator's and its workers' start
                if not self.ledger.epochs_started:
                    self.ledger.first_fetch = waited
                self.ledger.epochs_started += 1
                self.ledger.epoch_start += waited
                began, first = began + waited, False
            else:
                self.ledger.data_wait += waited
            loss_sum, n = timed_step(self.run, self.task, cfg, group, self.device, waited, self.meter, self.clock)
            epoch_loss += loss_sum
            self.ledger.samples += n
            pos.steps, pos.samples, pos.epoch_batches = pos.steps + 1, pos.samples + n, pos.epoch_batches + len(group)
            pos.epoch_samples += n
            bar.update(1)
            if self.eval_every is not None and pos.samples >= (len(self.checks) + 1) * self.eval_every:
                self._check()
            if progress and pos.steps % 10 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}", samples_s=f"{pos.epoch_samples / max(self.elapsed() - pos.epoch_began_s, 1e-9):,.0f}")
            # A trial's time limit counts from after the compile (the first step's):
            # the compile is scored apart (``compile_seconds``) and must not eat the windows.
            stopped_by = _stop_reason(pos.steps, self.process_began + self.clock.first_step_s, self.meter, max_steps,
                                      max_seconds)
            if stopped_by:
                break
            if self.checkpoints is not None and self.checkpoints.decide(pos.steps, agree):
                pos.epoch_loss = float(epoch_loss)
                with self.timing("checkpoints"):
                    self._save()
        sync_fn(self.device)()  # the epoch's steps, finished on the device
        self.ledger.training += time.perf_counter() - began - (self.ledger.evaluation + self.ledger.checkpoints - paused)
        bar.close()
        pos.epoch_loss = float(epoch_loss)
        return stopped_by

    def end_epoch(self, epoch: int, eval_each_epoch: bool, max_eval_batches: int | None) -> dict[str, Any]:
        """The epoch's history row (evaluated when asked), then the epoch-end checkpoints."""
        pos, run = self.pos, self.run
        loss_sum, samples = distributed.all_sum([pos.epoch_loss, pos.epoch_samples], self.dist, self.device)
        loss = check_finite(torch.tensor(loss_sum), int(samples), pos.steps)
        seconds = self.elapsed() - pos.epoch_began_s
        row = {"epoch": epoch + 1, "train_loss": loss, "lr": run.optimizer.param_groups[0]["lr"], "samples": int(samples),
               "seconds": seconds, "samples_per_s": samples / seconds if seconds > 0 else None}
        improved = False
        if eval_each_epoch:
            with self.timing("evaluation"):
                ev = evaluate(run.module, run.val_loader, self.task, self.device, self.cfg.amp, max_eval_batches,
                              self.cfg.channels_last, self.dist)
            now = self.elapsed()
            row.update(val_loss=ev.loss, val_accuracy=ev.accuracy, elapsed_s=now)
            improved = self._track(ev, epoch, now)
        pos.history.append(row)
        pos.epoch, pos.epoch_batches, pos.epoch_loss, pos.epoch_samples = epoch + 1, 0, 0.0, 0
        if self.checkpoints is not None:
            self.epoch_start = {name: g.get_state() for name, g in self._generators().items()}  # the next epoch's
            with self.timing("checkpoints"):
                state = self._save()
                if improved:
                    self.checkpoints.save(state, BEST)
        return row

    def _check(self) -> None:
        """Evaluate in the middle of an epoch (``eval_every_samples``), off the run's clock."""
        run, pos = self.run, self.pos
        sync_fn(self.device)()
        # Training time only: the epochs so far (their rows' seconds exclude the evaluation
        # after each) and this one up to here.
        train_seconds = sum(r["seconds"] for r in pos.history) + self.elapsed() - pos.epoch_began_s
        paused = time.perf_counter()
        with self.timing("evaluation"):
            ev = evaluate(run.module, run.val_loader, self.task, self.device, self.cfg.amp, None, self.cfg.channels_last,
                          self.dist)
        self.checks.append({"samples": pos.samples, "train_seconds": train_seconds, "val_loss": ev.loss,
                            "val_accuracy": ev.accuracy})
        self.began += time.perf_counter() - paused

    def _track(self, ev: EvalResult, epoch: int, now: float) -> bool:
        """Note the time-to-target (``now``: the run's clock after the evaluation);
        returns whether the validation score improved."""
        pos = self.pos
        if (self.target_accuracy is not None and pos.time_to_target_s is None
                and ev.accuracy is not None and ev.accuracy >= self.target_accuracy):
            pos.time_to_target_s, pos.target_epoch = now, epoch + 1
        score = ev.accuracy if ev.accuracy is not None else -ev.loss
        if pos.best_score is None or score > pos.best_score:
            pos.best_score = score
            return True
        return False

    def _save(self) -> dict[str, Any]:
        assert self.checkpoints is not None
        self.pos.elapsed_s = self.elapsed()
        # Every rank's random generators (for its own dropout) and its share of the epoch's
        # loss so far: each rank gets its own back on resume.
        mine = (checkpoint.rng_state(), checkpoint.rank_share(self.pos))
        rngs, ranks = zip(*distributed.gather(mine, self.dist))
        state = checkpoint.capture(self._stateful(), self.pos, self.epoch_start, self.cfg.to_dict(), list(rngs),
                                   list(ranks))
        self.checkpoints.save(state, LAST)
        return state


def _stop_reason(steps: int, start: float, meter: ThroughputMeter | None, max_steps: int | None, max_seconds: float | None) -> str:
    if meter is not None and meter.done:
        return "meter"
    if max_steps is not None and steps >= max_steps:
        return "max_steps"
    if max_seconds is not None and time.perf_counter() - start >= max_seconds:
        return "max_seconds"
    return ""
