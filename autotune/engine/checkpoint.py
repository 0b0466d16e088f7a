"""Checkpoints of the final run: everything needed to go on exactly where it stopped.

A checkpoint holds the model, optimizer, loss scaler and LR scheduler states, every random
number generator (python, numpy, torch's CPU and CUDA ones, and the two generators of the
training DataLoader: the one that shuffles and the one that seeds its workers, as they
were when the current epoch began), and the run's ``Position``: epoch, micro-batches of
the epoch already consumed, steps, samples, the epoch's running loss, the history so far,
the best validation score and the time-to-target clock.

A resumed run rebuilds the loader, gives the shuffling generator its state from the
start of the epoch (so the epoch's order is the same), skips the samples consumed before
the stop, and restores everything else: on the CPU it then computes what the
uninterrupted run computes, bit for bit (``tests/test_checkpoint.py``). Two things are
outside that promise: a DataLoader with ``persistent_workers`` seeds its workers once per
loader, so random transforms inside workers differ after a resume; and on a GPU,
non-deterministic kernels make any two runs differ slightly, resumed or not.

Files are written to a temporary name, flushed to disk and renamed, so a crash while
saving leaves the previous checkpoint intact. Their tensors are CPU tensors
(``to_cpu``): a checkpoint written on a GPU loads on a machine without one, and a resumed
run's ``load_state_dict`` calls put them back on its device.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from autotune.errors import AutotuneError

LAST, BEST = "last.pt", "best.pt"
FORMAT_VERSION = 1


@dataclass
class Position:
    """Where a run is, besides the state of its live objects."""

    epoch: int = 0  # epochs finished
    epoch_batches: int = 0  # micro-batches of the current epoch already consumed
    steps: int = 0  # optimizer steps taken in all
    samples: int = 0  # training samples processed in all
    epoch_loss: float = 0.0  # the current epoch's summed loss (float32, as accumulated)
    epoch_samples: int = 0
    elapsed_s: float = 0.0  # wall time of the run so far, from the first data touch
    epoch_began_s: float = 0.0  # elapsed_s when the current epoch began
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None  # validation accuracy, or -loss without accuracy
    time_to_target_s: float | None = None  # elapsed_s when the target was first reached
    target_epoch: int | None = None


class ResumableSampler(torch.utils.data.Sampler[int]):
    """A random order of ``n`` indices per epoch, drawn from its own generator, that can
    start an epoch part way through: ``skip(k)`` drops the first ``k`` indices of the
    next epoch's order (the order itself is drawn in full, as in the epoch it resumes).

    With ``world`` > 1 (several processes, ``engine.distributed``) every rank draws the
    same order from an identically seeded generator, padded by repeating its start to a
    multiple of ``world``, and takes every ``world``-th index from its ``rank``, as
    torch's DistributedSampler partitions: the ranks' i-th micro-batches together hold
    what one process's i-th batch of ``world`` times the size would.

    The training loader drops each rank's short last batch (``data.make_loader``), so
    every batch consumed before a stop is a full one: ``skip(batches * micro_batch)``
    resumes exactly, and every rank has as many batches (and steps) as the others.
    """

    def __init__(self, n: int, generator: torch.Generator, rank: int = 0, world: int = 1):
        self.n, self.generator, self.rank, self.world, self._skip = n, generator, rank, world, 0

    def skip(self, k: int) -> None:
        self._skip = k

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        order += order[: len(self) * self.world - self.n]
        start, self._skip = self._skip, 0
        return iter(order[self.rank:: self.world][start:])


POLL_SHARE = 0.05  # under several ranks, a time-based checkpoint comes up to this share of every_s late


@dataclass
class Checkpointer:
    """Where and how often the final run saves itself.

    ``last.pt`` is written at the end of every epoch and, within an epoch, every
    ``every_steps`` optimizer steps or ``every_s`` seconds (whichever is set; both None:
    epoch ends only); ``best.pt`` whenever the validation score improves.

    The ranks of a multi-process run must save after the same step (a save gathers every
    rank's state), and ``decide`` makes sure they do without a collective per step. A
    step count is the same on every rank, so ``every_steps`` needs no communication at
    all. Clocks differ, so with ``every_s`` the ranks compare theirs (one all-reduce)
    only every so many steps: as many as take about ``POLL_SHARE`` of ``every_s`` at the
    ranks' mean step time measured between the last two comparisons. A time-based
    checkpoint then comes about that much late (more only if the steps slow down
    between two comparisons), and the steps in between wait for no other rank.
    """

    folder: Path
    every_steps: int | None = None
    every_s: float | None = 600.0
    enabled: bool = True  # False on the ranks that do not write (all but rank 0)
    _last_step: int = 0
    _last_time: float = field(default_factory=lambda: time.perf_counter())
    _next_poll: int = 0  # the step at which the ranks next compare clocks
    _polled: tuple[int, float] | None = None  # (step, time) of the last comparison

    def due(self, steps: int) -> bool:
        """Whether this process's own count or clock says a checkpoint is due."""
        if self.every_steps is not None:
            return steps - self._last_step >= self.every_steps
        return self.every_s is not None and time.perf_counter() - self._last_time >= self.every_s

    def decide(self, steps: int, agree: Callable[[bool, float], tuple[bool, float]] | None = None) -> bool:
        """Whether to save after optimizer step ``steps``: the same answer on every rank.

        ``agree(flag, step_s)`` (given with several ranks, ``distributed.agreement``)
        returns whether any rank's flag is set and the ranks' mean of ``step_s``, the
        same on every rank; it is called only for ``every_s``, and only every so many
        steps (see the class). Without it the decision is this process's own (``due``).
        """
        if agree is None or self.every_steps is not None or self.every_s is None:
            return self.due(steps)
        if steps < self._next_poll:
            return False
        now = time.perf_counter()
        # Seconds per step since the last comparison; none before the first (0: compare
        # again at the next step, when there is one to measure).
        step_s = (now - self._polled[1]) / max(1, steps - self._polled[0]) if self._polled else 0.0
        flag, mean_step_s = agree(self.due(steps), step_s)
        self._polled = (steps, now)
        stride = int(POLL_SHARE * self.every_s / mean_step_s) if mean_step_s > 0 else 1
        self._next_poll = steps + max(1, stride)
        return flag

    def save(self, state: dict[str, Any], name: str = LAST) -> Path | None:
        self._last_step, self._last_time = state["position"]["steps"], time.perf_counter()
        if not self.enabled:
            return None
        return save_atomic(state, Path(self.folder) / name)

    def load(self, name: str = LAST) -> dict[str, Any] | None:
        path = Path(self.folder) / name
        return load(path) if path.exists() else None


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (in dicts, lists and tuples, nested) on the CPU.

    ``torch.load`` puts a tensor back on the device it was saved from, so a file saved
    with CUDA tensors cannot be loaded on a machine without CUDA (``weights_only=True``
    included) unless the reader knows to pass ``map_location``. CPU tensors are kept
    as they are; a state dict keeps its type and its ``_metadata`` (the modules'
    versions, which ``load_state_dict`` reads).
    """
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        items = [(k, to_cpu(v)) for k, v in obj.items()]
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if type(obj) in (list, tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: Path) -> dict[str, Any]:
    try:
        # weights_only: tensors and plain Python values only; nothing in the file can run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AutotuneError(f"Cannot read the checkpoint {path}: {type(exc).__name__}: {exc}",
                            hint="Delete it to start the run afresh.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise AutotuneError(f"{path} is not a checkpoint this version of autotune wrote.",
                            hint="Delete it to start the run afresh.")
    return state


def rng_state() -> dict[str, Any]:
    # numpy's state as plain Python values, so a checkpoint loads with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_share(position: Position) -> dict[str, Any]:
    """The part of ``position`` each rank has for itself: its share of the epoch's loss."""
    return {"epoch_loss": position.epoch_loss, "epoch_samples": position.epoch_samples}


def capture(objects: dict[str, Any], position: Position, epoch_start: dict[str, torch.Tensor], config: dict[str, Any],
            rngs: list[dict[str, Any]] | None = None, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The checkpoint of a run, its tensors on the CPU (``to_cpu``): ``objects`` maps
    names (model, optimizer, scaler, scheduler) to things with ``state_dict``;
    ``epoch_start`` holds the loader generators' states at the start of the current
    epoch; ``rngs`` every rank's random generators (default: this process's); ``ranks``
    every rank's part of the position (its ``epoch_loss`` and ``epoch_samples``;
    default: ``position``'s)."""
    return {
        "ranks": ranks if ranks is not None else [rank_share(position)],
        "format": FORMAT_VERSION,
        "config": config,
        "position": asdict(position),
        "states": {name: to_cpu(obj.state_dict()) for name, obj in objects.items()},
        "rng": rngs if rngs is not None else [rng_state()],
        "epoch_start": {k: v.clone() for k, v in epoch_start.items()},
    }


def restore(state: dict[str, Any], objects: dict[str, Any], config: dict[str, Any], rank: int = 0, world: int = 1) -> tuple[Position, dict[str, torch.Tensor]]:
    """Load ``state`` into ``objects`` after checking it was written with ``config``;
    returns the position and the loader generators' epoch-start states. A run resumes
    with as many ranks as it had (each takes its share of every batch), and rank ``rank``
    gets its own random generators and its own share of the epoch's loss back."""
    check_config(state.get("config", {}), config)
    if len(state["rng"]) != world:
        raise AutotuneError(f"The checkpoint was written by a run of {len(state['rng'])} process(es); this one has {world}.",
                            hint="Resume with the same --nproc.")
    for name, obj in objects.items():
        obj.load_state_dict(state["states"][name])
    set_rng_state(state["rng"][rank])
    position = Position(**state["position"])
    for key, value in state.get("ranks", [{}] * world)[rank].items():  # this rank's share of the epoch so far
        setattr(position, key, value)
    return position, state["epoch_start"]


def check_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A run resumes only with the config it was started with: any other (more epochs
    included, which change the LR schedule) would not continue the same run."""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in changed[:4])
        raise AutotuneError(
            f"The checkpoint was written by a run with another config ({diffs}).",
            hint="Resume with the same tuned config and --epochs, or start afresh without --resume.",
        )
