"""Lightning's side of benchmarks/batch_finder.py: its ``Tuner.scale_batch_size`` (binsearch
or power) or a plain 3-step fit at one size, each in a fresh process under the same CPU
memory cap as our probes, on a LightningModule that trains the same model file with the
same loss and AdamW.

    .venv/bin/python benchmarks/batch_finder_lightning.py MODEL MODE CAP_BYTES N

MODE is ``binsearch``, ``power`` or ``fit:<size>``; prints one line of JSON. batch_finder.py
runs it through ``run_lightning``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

def run_lightning(model: str, mode: str, cap: int, n: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, model, mode, str(cap), str(n)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    process_wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}", "process_wall_s": process_wall}
    out = json.loads(lines[-1])
    out["process_wall_s"] = process_wall
    return out


def lightning_child(model: str, mode: str, cap: int, n: int) -> None:
    """In a fresh process: build the module, cap memory, then run the tuner in ``mode``
    (binsearch or power), or with ``fit:<size>`` a plain 3-step fit at that size; print JSON."""
    import logging
    import tempfile
    import warnings

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.tuner import Tuner

    from autotune.engine.memory import cap_memory

    warnings.filterwarnings("ignore")
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "atch size" in record.getMessage():
                messages.append(record.getMessage())

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).addHandler(Keep())
    module = _lightning_module(pl.LightningModule, model, n)
    fit_size = int(mode.split(":")[1]) if mode.startswith("fit:") else None
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, max_steps=3 if fit_size else -1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=root)
        torch.ones(64, 64) @ torch.ones(64, 64)  # start the thread pool before the baseline, as a probe does
        cap_memory(cap, torch.device("cpu"))
        start = time.perf_counter()
        found, error = None, None
        try:
            if fit_size:
                module.batch_size = fit_size
                trainer.fit(module)
                found = fit_size
            else:
                found = Tuner(trainer).scale_batch_size(module, mode=mode, init_val=2, max_trials=25, steps_per_trial=3, max_val=n)
        except BaseException as exc:  # report what broke it, e.g. an out-of-memory error Lightning did not recognise
            error = _describe(exc)
        wall = time.perf_counter() - start
    print(json.dumps({"found": found, "tried": module.tried, "probes": len(module.tried), "wall_s": wall,
                      "error": error, "messages": messages}))


def _lightning_module(base: type, model: str, n: int) -> Any:
    """A LightningModule training ``model`` with its loss and AdamW (the defaults a probe
    uses) on the worst-case training items repeated to 3 * N, so every batch up to N is full."""
    import torch

    from autotune.config import TrainConfig
    from autotune.search.probe import worst_case_indices
    from autotune.model.task import load_task

    task, cfg = load_task(ROOT / model), TrainConfig(amp="off")
    train = task.datasets()[0]
    order = worst_case_indices(train, len(train))

    class Cycled(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3 * n

        def __getitem__(self, i: int) -> Any:
            return train[order[i % len(order)]]

    class Module(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = task.build_model()
            self.batch_size = 2
            self.tried: list[int] = []

        def train_dataloader(self) -> Any:
            collate = task.collate or torch.utils.data.default_collate
            return torch.utils.data.DataLoader(Cycled(), batch_size=self.batch_size, collate_fn=collate)

        def on_train_start(self) -> None:  # once per trial of the tuner
            self.tried.append(self.batch_size)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            inputs, target = batch
            return task.loss(task.call(self.net, inputs), target)

        def configure_optimizers(self) -> Any:
            return task.make_optimizer(self.parameters(), cfg.lr, cfg.weight_decay)

    return Module()


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {first} (raised in {frame.name}, {Path(frame.filename).name}:{frame.lineno})"


def lightning_oom_check() -> str:
    """Where Lightning recognises the CPU allocator's out-of-memory error."""
    import inspect

    from lightning.pytorch.utilities import memory

    source = inspect.getsource(memory.is_out_of_cpu_memory)
    found = "DefaultCPUAllocator: can't allocate memory" in source
    return (f"{memory.__file__}: is_out_of_cpu_memory {'matches' if found else 'does NOT match'} "
            "\"DefaultCPUAllocator: can't allocate memory\" (RuntimeError with one argument only)")


if __name__ == "__main__":
    model, mode, cap, n = sys.argv[1:5]
    lightning_child(model, mode, int(cap), int(n))
