"""What the search needs to know about the model itself, measured once before a new study.

- FLOPs per training sample (``engine.flops``), for every trial's MFU.
- The gradient noise scale B_noise (``engine.gns``), for every trial's statistical
  efficiency and goodput: the model trains for a few seconds at its reference config, and
  every optimizer step first measures the gradient of each of its ``k`` micro-batches
  alone and of their mean. The noise scale grows as training moves off the initial
  weights, so only the second half of the observations is pooled into the estimate.

Both are properties of the model and its data, not of a config, so one measurement
serves every trial and all trials are scored on the same scale.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from autotune.config import TrainConfig
from autotune.engine import knobs
from autotune.engine.data import batch_len, to_device
from autotune.engine.flops import train_step_flops
from autotune.engine.gns import NoiseScale, observe_micro_batches
from autotune.engine.loop import pick_device
from autotune.errors import TrialError
from autotune.task import Task, load_task

GNS_GROUP = 4  # micro-batches per observation: the small batch is the reference batch / 4


def measure(model_path: str, config: dict[str, Any], max_seconds: float = 10.0, max_steps: int = 200) -> dict[str, Any]:
    """FLOPs per sample and the gradient noise scale; runs in a fresh process.

    ``config`` is the reference config (the model file's ``BASE``); the noise scale is
    measured with micro-batches of a quarter of its batch, four to a step.
    """
    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_dict(config, source="model statistics config")
    device = pick_device()
    generator = knobs.seed_everything(cfg.seed)
    train_set = task.datasets()[0]
    small = max(1, min(cfg.base_batch_size // GNS_GROUP, len(train_set) // GNS_GROUP))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=small, shuffle=True, drop_last=True, collate_fn=task.collate, generator=generator
    )
    model = task.build_model().to(device).train()
    optimizer = task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)

    def loss_of(m: torch.nn.Module, inputs: Any, target: Any) -> torch.Tensor:
        return task.loss(task.call(m, inputs), target)

    batches = (to_device(b, device) for b in itertools.chain.from_iterable(itertools.repeat(loader)))
    first = next(batches)
    flops = train_step_flops(model, lambda m: loss_of(m, *first))
    batches = itertools.chain([first], batches)  # the noise scale starts from the same first batch
    observations: list[NoiseScale] = []
    start = time.perf_counter()
    if len(loader) >= GNS_GROUP:
        while len(observations) < max_steps and time.perf_counter() - start < max_seconds:
            group = [tuple(b) for b in itertools.islice(batches, GNS_GROUP)]
            one = NoiseScale()
            observe_micro_batches(model, loss_of, group, one)
            observations.append(one)
            _step(model, optimizer, loss_of, group)
    pooled = NoiseScale()
    for one in observations[len(observations) // 2:]:
        pooled = pooled.merge(one)
    return {
        "flops_per_sample": flops / batch_len(first[1]),
        "gns": pooled.to_dict(),
        "gns_micro_batch": small,
        "gns_group": GNS_GROUP,
        "gns_steps": len(observations),
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_of: Any, group: list[tuple[Any, Any]]) -> None:
    """One plain optimizer step on the mean gradient of ``group``, so training moves on."""
    for inputs, target in group:
        (loss_of(model, inputs, target) / len(group)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_isolated(task: Task, timeout_s: float = 120.0) -> dict[str, Any]:
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
