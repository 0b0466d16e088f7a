"""One trial: a short real training run of one config, measured. Runs in its own process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import optuna
import torch
from tqdm import tqdm

from autotune.config import TrainConfig
from autotune.engine import knobs
from autotune.engine.loop import pick_device, sync_fn, train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import cap_memory, memory_used_bytes, reraise_at_cap
from autotune.errors import TrialError
from autotune.search.probe import prime_imports
from autotune.search.prune import window_judge
from autotune.model.task import Task, load_task


@dataclass(frozen=True)
class TrialBudget:
    """How long a trial measures. Defaults suit small models on a CPU."""

    warmup_steps: int = 3  # optimizer steps not timed (lazy init, allocator growth)
    window_s: float = 0.5  # minimum length of one timed window
    windows: int = 5  # timed windows; throughput is their median
    max_steps: int = 2000  # a trial never takes more optimizer steps than this
    max_seconds: float = 30.0  # ... nor more seconds of training
    timeout_s: float = 120.0  # the trial process is killed after this long
    max_eval_batches: int = 5  # validation batches evaluated after the trial (a sanity check, not scored)
    memory_limit_bytes: int | None = None  # the trial process may use no more (--memory-limit)
    # More time for a compiled config's process: a cold compile (max-autotune benchmarks
    # kernel candidates) can alone take minutes on a GPU; its steps then run as any other.
    compile_timeout_s: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def timeout_for(self, config: TrainConfig) -> float:
        """How long the process measuring ``config`` may run before it is killed."""
        return self.timeout_s + (self.compile_timeout_s if config.compile != "off" else 0.0)


def measure(model_path: str, config: dict[str, Any], budget: dict[str, Any], report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``config`` briefly on the model file's task; return the measurements.

    The run's epochs are not what ends a trial: the meter's windows, ``max_steps`` or
    ``max_seconds`` do, and the LR schedule spans only the steps the trial may take.
    With ``report`` (a ``prune.Reporting``), the trial judges itself after each window; a
    pruned trial returns what it measured so far with ``pruned`` set.
    """
    b = TrialBudget(**budget)
    # A trial shows no progress bars, and must not start tqdm's monitor thread either:
    # under a CPU memory cap, a thread's stack and malloc arena (~72 MiB of address space
    # here) would count against the limit and the memory probe would not foresee them.
    tqdm.monitor_interval = 0
    load_before = os.getloadavg()[0]
    task = load_task(model_path, validate=False)
    task.datasets()
    cfg = TrainConfig.from_dict(config, source="trial config")
    device = pick_device()
    # The allocator's setting goes in before anything starts CUDA (the memory cap does).
    with cold_compile_cache(cfg.compile != "off"), knobs.expandable_segments(device.type, cfg.expandable_segments):
        return _capped(task, cfg, device, b, load_before, report)


@contextlib.contextmanager
def cold_compile_cache(enabled: bool) -> Iterator[None]:
    """A fresh, empty Inductor (and Triton) cache for this process while the block runs.

    A compiled trial then always pays a cold compile, whatever trials compiled the same
    model before it: ``compile_seconds`` does not depend on the order of the trials, and
    it is what a first final run pays. The folder is removed afterwards.
    """
    if not enabled:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="autotune-inductor-", ignore_cleanup_errors=True) as folder:
        saved = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _capped(task: Task, cfg: TrainConfig, device: torch.device, b: TrialBudget, load_before: float,
            report: dict[str, Any] | None) -> dict[str, Any]:
    """The trial under ``b.memory_limit_bytes`` when there is one."""
    baseline = None
    if b.memory_limit_bytes is not None:
        prime_imports(task, cfg)
        baseline = cap_memory(b.memory_limit_bytes, device)
    try:
        out = _train_and_measure(task, cfg, device, b, load_before, report)
        if baseline is not None:  # in the terms the memory probe and the cap count
            out["memory_used_bytes"] = memory_used_bytes(device, baseline)
        return out
    except Exception as exc:
        if baseline is not None:
            reraise_at_cap(exc, device, baseline, b.memory_limit_bytes)
        raise


def _train_and_measure(task: Task, cfg: TrainConfig, device: torch.device, b: TrialBudget, load_before: float,
                       report: dict[str, Any] | None) -> dict[str, Any]:
    meter = ThroughputMeter(b.warmup_steps, b.window_s, b.windows, sync=sync_fn(device),
                            on_window=window_judge(report) if report else None)
    try:
        result = train(
            task,
            dataclasses.replace(cfg, epochs=10**6),
            device,
            max_steps=b.max_steps,
            max_seconds=b.max_seconds,
            meter=meter,
            max_eval_batches=b.max_eval_batches,
        )
    except optuna.TrialPruned as exc:
        return {**meter.summary(), "pruned": True, "reason": str(exc), "device": str(device), "pid": os.getpid()}
    if result.skipped_steps > max(4, result.steps // 2):
        raise TrialError(
            f"fp16 loss scaling skipped {result.skipped_steps} of {result.steps} optimizer steps "
            "(inf/NaN gradients): this config does not train in fp16"
        )
    return {
        **result.throughput,
        "skipped_steps": result.skipped_steps,
        "compile_seconds": result.compile_seconds,
        # The samples the final run will process, over which compile time is spread.
        "run_samples": len(task.datasets()[0]) * cfg.epochs,
        "start_seconds": start_seconds(cfg, result.ledger),
        "peak_memory_bytes": result.peak_memory_bytes,
        "steps": result.steps,
        "samples": result.samples,
        "train_seconds": result.seconds,
        "stopped_by": result.stopped_by,
        "train_loss": result.train_loss,
        "val_loss": result.evaluation.loss,
        "val_accuracy": result.evaluation.accuracy,
        "device": str(device),
        # Other work on the machine distorts timings; kept so a noisy trial can be spotted.
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
        "pid": os.getpid(),
    }


def start_seconds(cfg: TrainConfig, ledger: dict[str, Any]) -> float:
    """What starting its DataLoaders will cost the final run, from what the trial's own
    starts took: nothing without workers (an epoch's first batch then loads like any
    other, which the steady-state windows already count). With workers, each loader
    (training, and validation after each epoch) starts its workers once when they are
    persistent, at every epoch when not, each start costing what the trial's first fetch
    cost; persistent workers then still wait for each later epoch's first batches, at
    what the trial's later epoch starts cost (when it reached one)."""
    if cfg.num_workers == 0 or not ledger.get("epochs_started"):
        return 0.0
    first = ledger["first_fetch"]
    if not cfg.persistent_workers:
        return 2 * cfg.epochs * first
    later = (ledger["epoch_start"] - first) / (ledger["epochs_started"] - 1) if ledger["epochs_started"] > 1 else 0.0
    return 2 * first + (cfg.epochs - 1) * later
