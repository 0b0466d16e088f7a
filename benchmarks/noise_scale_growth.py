"""Does the gradient noise scale measured before a study hold over a whole training run?

Before a new study, ``search/model_stats.py`` trains each model for a few seconds at its
reference config (up to 200 steps or 10 s) and pools the second half of those steps into
one noise scale B_noise, which sets every trial's statistical efficiency and so its
goodput. McCandlish et al. (2018) found that B_noise grows as the loss falls. This trains
each model the same way (the reference batch as four micro-batches, their gradients
measured alone and together before every plain optimizer step) for ``--epochs`` epochs
and prints, per epoch, the noise scale of that epoch's steps and the efficiency it gives
an effective batch of 256 against one of 16 (what goodput weighs against a throughput
gain), next to the estimate the study would have used.

    .venv/bin/python benchmarks/noise_scale_growth.py [--epochs 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

from _common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["examples/digits_cnn.py", "examples/breast_cancer_mlp.py", "examples/sequence_transformer.py"]


def growth(model_path: str, epochs: int) -> dict[str, Any]:
    """Per-epoch noise scales of one model trained at its reference config."""
    import torch

    from autotune.config import TrainConfig
    from autotune.engine import knobs
    from autotune.engine.gns import NoiseScale, efficiency, observe_micro_batches
    from autotune.search.model_stats import GNS_GROUP, _step, measure
    from autotune.task import load_task

    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size)
    at_start = measure(model_path, cfg.to_dict())  # what a new study uses
    generator = knobs.seed_everything(cfg.seed)
    train_set = task.datasets()[0]
    small = max(1, cfg.base_batch_size // GNS_GROUP)
    loader = torch.utils.data.DataLoader(train_set, batch_size=small, shuffle=True, drop_last=True,
                                         collate_fn=task.collate, generator=generator)
    model = task.build_model().train()
    optimizer = task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)

    def loss_of(m: torch.nn.Module, inputs: Any, target: Any) -> torch.Tensor:
        return task.loss(task.call(m, inputs), target)

    rows = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        pooled, batches = NoiseScale(), iter(loader)
        while group := [tuple(b) for b in itertools.islice(batches, GNS_GROUP)]:
            if len(group) < GNS_GROUP:
                break
            one = NoiseScale()
            observe_micro_batches(model, loss_of, group, one)
            pooled = pooled.merge(one)
            _step(model, optimizer, loss_of, group)
        b = pooled.b_noise
        rows.append({"epoch": epoch, "steps": pooled.n, "b_noise": b,
                     "efficiency_256_over_16": efficiency(256, cfg.base_batch_size, b) / efficiency(16, cfg.base_batch_size, b)})
        print(f"  {Path(model_path).stem} epoch {epoch}: {pooled.n} steps, B_noise "
              f"{'n/a' if b is None else f'{b:,.0f}'}, efficiency 256 / 16 {rows[-1]['efficiency_256_over_16']:.2f}", flush=True)
    b0 = at_start["gns"]["b_noise"]
    return {"model": model_path, "reference_batch": cfg.base_batch_size, "at_start": {
                "b_noise": b0, "steps": at_start["gns_steps"], "seconds": at_start["seconds"],
                "efficiency_256_over_16": efficiency(256, cfg.base_batch_size, b0) / efficiency(16, cfg.base_batch_size, b0)},
            "epochs": rows, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"noise_scale_growth-{dt.date.today()}.json")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    results = [growth(m, args.epochs) for m in args.models]
    print(f"machine: {machine()}")
    print("model | at start (steps) | epoch 1 | epoch 5 | last epoch | efficiency 256/16: start, last")
    for r in results:
        by = {e["epoch"]: e["b_noise"] for e in r["epochs"]}
        fmt = lambda b: "n/a" if b is None else f"{b:,.0f}"  # noqa: E731
        print(f"{Path(r['model']).stem} | {fmt(r['at_start']['b_noise'])} ({r['at_start']['steps']}) | {fmt(by.get(1))} | "
              f"{fmt(by.get(5))} | {fmt(by[max(by)])} | {r['at_start']['efficiency_256_over_16']:.2f}, "
              f"{r['epochs'][-1]['efficiency_256_over_16']:.2f}")
    command = f"benchmarks/noise_scale_growth.py --epochs {args.epochs} --threads {args.threads}"
    command += "" if args.models == MODELS else " --models " + " ".join(args.models)
    write_result(args.out, command, models=results)


if __name__ == "__main__":
    main()
