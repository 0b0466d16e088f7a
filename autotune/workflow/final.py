"""The final run: the full training with the tuned config, in one process or in several
through torchrun (``--nproc``), with checkpoints, resume and time-to-target.

In one process, ``final_run`` trains here. With ``nproc`` > 1 it starts torchrun
(``engine.distributed.launch``), each rank runs ``run_rank`` (``engine.ddp_main``), and
rank 0 writes the weights and the result (``final_result.pt``), which ``final_run`` reads
back for the report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.config import TrainConfig, scaled_lr, write_atomic
from autotune.engine import distributed
from autotune.engine.checkpoint import LAST, Checkpointer, save_atomic, to_cpu
from autotune.engine.distributed import SINGLE, Dist
from autotune.engine.loop import EvalResult, TrainResult, pick_device, train as train_loop
from autotune.errors import AutotuneError
from autotune.model.task import Task

WEIGHTS_FILE = "model.pt"
CHECKPOINT_DIR = "checkpoints"
RESULT_FILE = "final_result.pt"
CONFIG_FILE = "final_config.json"


@dataclass(frozen=True)
class FinalOptions:
    """How the final run saves itself, what it times, and on how many devices."""

    resume: bool = False  # go on from OUT/checkpoints/last.pt
    target_accuracy: float | None = None  # record the time to reach this validation accuracy
    checkpoint_every_steps: int | None = None  # within an epoch; None: every checkpoint_every_s
    checkpoint_every_s: float | None = 600.0
    nproc: int = 1  # processes (devices) through torchrun; 1: this process


def final_run(task: Task, cfg: TrainConfig, out: Path, progress: bool, log: Any = print,
              final: FinalOptions = FinalOptions(), gpus: list[dict[str, Any]] | None = None) -> TrainResult:
    """The full training run with ``cfg``; checkpoints in ``out/checkpoints``, the weights
    in ``out/model.pt``. ``gpus`` (the hardware profile's) sizes the per-rank batch."""
    out.mkdir(parents=True, exist_ok=True)
    if final.nproc > 1 and torch.cuda.is_available() and torch.cuda.device_count() < final.nproc:
        raise AutotuneError(f"--nproc {final.nproc}: this machine has {torch.cuda.device_count()} GPU(s).",
                            hint="Use at most one process per GPU.")
    if final.nproc > 1:
        return _torchrun(task, per_rank_config(cfg, final.nproc, gpus or [], log), out, progress, log, final)
    return run_rank(task, cfg, out, progress, log, final, SINGLE, pick_device())


def run_rank(task: Task, cfg: TrainConfig, out: Path, progress: bool, log: Any, final: FinalOptions, d: Dist,
             device: torch.device) -> TrainResult:
    """The final run in this process: all of it, or rank ``d.rank``'s part."""
    checkpoints = Checkpointer(out / CHECKPOINT_DIR, every_steps=final.checkpoint_every_steps,
                               every_s=final.checkpoint_every_s, enabled=d.main)
    resume = None
    if final.resume:
        resume = checkpoints.load(LAST)
        if resume is None:
            raise AutotuneError(f"--resume: there is no checkpoint to resume from in {checkpoints.folder}.",
                                hint="Run without --resume to start the final run afresh.")
        where = resume["position"]
        if d.main and where["epoch"] >= cfg.epochs:
            log(f"autotune: the checkpointed final run had finished its {cfg.epochs} epochs; nothing is left to train")
        elif d.main:
            log(f"autotune: resuming the final run at epoch {where['epoch'] + 1}, step {where['steps']}")
    if d.main:
        ranks = f" x {d.world} processes" if d.active else ""
        log(f"autotune: final run on {device}{ranks}: {cfg.epochs} epochs, micro-batch {cfg.micro_batch_size}"
            f" x {cfg.accumulation_steps}, amp {cfg.amp}, lr {cfg.lr:.3g}")
    result = train_loop(task, cfg, device, progress=progress, eval_each_epoch=True, checkpoints=checkpoints,
                        resume=resume, target_accuracy=final.target_accuracy, dist=d)
    if d.main:
        # CPU tensors: model.pt loads with torch.load(..., weights_only=True) on any machine.
        save_atomic(to_cpu(result.model.state_dict()), out / WEIGHTS_FILE)
        if final.target_accuracy is not None:
            reached = (f"in {result.time_to_target_s:.1f} s (epoch {result.target_epoch})"
                       if result.time_to_target_s is not None else "not reached")
            log(f"autotune: target validation accuracy {final.target_accuracy:g} {reached}")
    return result


def per_rank_config(cfg: TrainConfig, nproc: int, gpus: list[dict[str, Any]], log: Any = print,
                    devices: list[dict[str, Any]] | None = None) -> TrainConfig:
    """The config each of ``nproc`` ranks trains with.

    The tuned micro-batch is per rank, sized on CUDA device 0: when a smaller card is
    among the devices of ranks 0 to ``nproc`` - 1 (CUDA devices 0 to ``nproc`` - 1, each
    with its memory as torch reports it, matched to the profile's ``gpus`` by
    ``hardware.devices.cuda_gpus``; ``devices`` defaults to what torch sees), the
    micro-batch shrinks by their memory ratio, since every rank takes the same batch.
    Without CUDA devices it stays as tuned. The effective batch is ``nproc`` times the
    tuned one, so the learning rate is scaled to it by the config's own rule.
    """
    from autotune.hardware.devices import cuda_gpus

    micro = cfg.micro_batch_size
    sizes = [g.get("memory_total_bytes") for g in cuda_gpus(gpus, devices)[:nproc]]
    if len(sizes) == nproc and all(isinstance(s, (int, float)) and s > 0 for s in sizes) and min(sizes) < sizes[0]:
        micro = max(1, int(micro * min(sizes) / sizes[0]))
        log(f"autotune: the smallest of the {nproc} GPUs has {min(sizes) / sizes[0]:.0%} of the first one's memory: "
            f"micro-batch {cfg.micro_batch_size} -> {micro} per rank")
    effective = micro * cfg.accumulation_steps * nproc
    lr = scaled_lr(cfg.base_lr, cfg.base_batch_size, effective, cfg.lr_rule)
    return dataclasses.replace(cfg, micro_batch_size=micro, lr=lr)


def _torchrun(task: Task, cfg: TrainConfig, out: Path, progress: bool, log: Any, final: FinalOptions) -> TrainResult:
    (out / RESULT_FILE).unlink(missing_ok=True)
    config = out / CONFIG_FILE
    write_atomic(config, json.dumps({"config": cfg.to_dict(), "final": dataclasses.asdict(final)}, indent=2) + "\n")
    args = ["--model", str(task.path), "--config", str(config), "--out", str(out)] + ([] if progress else ["--no-progress"])
    log(f"autotune: starting {final.nproc} processes with torchrun ({'nccl' if torch.cuda.is_available() else 'gloo'})")
    code = distributed.launch(final.nproc, args)
    if code != 0 or not (out / RESULT_FILE).exists():
        raise AutotuneError(f"The final run under torchrun ({final.nproc} processes) failed with exit code {code}.",
                            hint="Its processes' errors are above; --resume goes on from the last checkpoint.")
    return load_result(out / RESULT_FILE)


def save_result(result: TrainResult, path: Path) -> Path:
    """What the report needs of a run (not the model: that is in model.pt)."""
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model"}
    data["evaluation"] = dataclasses.asdict(result.evaluation)
    return save_atomic(data, path)


def load_result(path: Path) -> TrainResult:
    data = torch.load(path, weights_only=True)  # plain values and tensors; nothing can run code
    data["evaluation"] = EvalResult(**data["evaluation"])
    return TrainResult(**data)


__all__ = ["FinalOptions", "final_run", "per_rank_config", "run_rank"]
