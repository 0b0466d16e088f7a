"""DataLoaders built from a TrainConfig, and moving nested batches to the device."""

from __future__ import annotations

import functools
import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autotune.config import TrainConfig
from autotune.engine.checkpoint import ResumableSampler
from autotune.engine.distributed import SINGLE, Dist, ShardSampler, rank_seed


def _seed_worker(worker_id: int, rank: int = 0) -> None:
    """Seed a DataLoader worker's numpy and python generators (and, on ranks other than
    0, torch's too) from the seed torch gave it: the loader's base seed plus
    ``worker_id``. Every rank's loader draws the same base seed (its generator is seeded
    alike on every rank, and restored alike on resume), so rank ``rank`` mixes itself
    in: each rank's workers get random transforms of their own."""
    seed = rank_seed(torch.initial_seed(), rank)
    if rank:
        torch.manual_seed(seed)
    seed %= 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    *,
    train: bool,
    collate_fn: Callable | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    dist: Dist = SINGLE,
) -> DataLoader:
    """A DataLoader with the config's micro-batch and worker knobs.

    A training loader shuffles with a ``ResumableSampler`` drawing from ``generator``,
    and seeds its workers from a second generator derived from it, so a checkpoint can
    restore each on its own (``checkpoint``); each rank's workers mix in its rank
    (``_seed_worker``). ``pin_memory`` is honoured only when the device is a GPU
    (pinning without one only costs time); ``persistent_workers`` only with workers.
    Under ``dist`` (several ranks) each rank loads its share: of the shuffled order in
    training, of the validation set in order otherwise.

    A training loader drops the epoch's short last micro-batch: every step then sees
    the same shapes, so torch.compile does not recompile at each epoch's end and CUDA
    graphs can replay; the dropped samples are in other epochs' batches, as the order is
    drawn afresh each epoch. When the training set (a rank's share of it) is smaller than
    one micro-batch, its one short batch is kept rather than an epoch of nothing.
    Validation loads every item.
    """
    workers = cfg.num_workers
    batch = batch_size or cfg.micro_batch_size
    sampler: Any = None
    worker_seeds = None
    if train:
        order = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
        sampler = ResumableSampler(len(dataset), order, dist.rank, dist.world)  # type: ignore[arg-type]
        worker_seeds = torch.Generator().manual_seed(order.initial_seed() + 1)
    elif dist.active:
        sampler = ShardSampler(len(dataset), dist)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=cfg.persistent_workers and workers > 0,
        collate_fn=collate_fn,
        generator=worker_seeds,
        worker_init_fn=functools.partial(_seed_worker, rank=dist.rank) if workers > 0 else None,
        drop_last=train and len(sampler) >= batch,
    )


def to_device(obj: Any, device: torch.device, non_blocking: bool = False, channels_last: bool = False) -> Any:
    """Move a tensor, or a tuple/list/dict of tensors, to ``device``.

    With ``channels_last``, 4-D floating tensors (image batches, N x C x H x W) are laid
    out channels_last on the way; other tensors keep their layout.
    """
    if isinstance(obj, torch.Tensor):
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            return obj.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking, channels_last) for v in obj)
    return obj


def batch_len(target: Any) -> int:
    """Number of samples in a batch, read from its target."""
    if isinstance(target, torch.Tensor):
        return int(target.shape[0]) if target.ndim else 1
    if isinstance(target, dict):
        return batch_len(next(iter(target.values())))
    if isinstance(target, (list, tuple)):
        return batch_len(target[0]) if target and isinstance(target[0], torch.Tensor) else len(target)
    return 1
