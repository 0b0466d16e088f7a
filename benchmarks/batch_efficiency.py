"""Does goodput's statistical efficiency predict how many samples a batch size needs?

Goodput weighs a config's samples/s by the statistical efficiency of its effective batch
B, (1 + B0/B_noise) / (1 + B/B_noise) against the reference batch B0, from McCandlish et
al. (2018): the samples needed to reach a loss grow as 1 + B/B_noise. This checks that
prediction on the model's real full runs: for each effective batch in ``--batches`` (as
the micro-batch, learning rate scaled by the model's rule, every other knob at its
default), one full training run in a fresh process with an evaluation after every
epoch. The loss target is the best validation (or training) loss that every batch
reached at some epoch; per batch, the samples trained until that loss, over those the
smallest batch needed, next to the ratio the efficiency predicts from the noise scale a
new study would measure (``search/model_stats.py``).

    .venv/bin/python benchmarks/batch_efficiency.py [--model examples/sequence_transformer.py]
        [--batches 16 32 64 128 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from _common import machine, write_result
from goodput_vs_throughput import full_run

ROOT = Path(__file__).resolve().parents[1]


def samples_to(history: list[dict[str, Any]], key: str, target: float) -> int | None:
    """Training samples until an epoch's ``key`` loss first is at most ``target``."""
    seen = 0
    for row in history:
        seen += row["samples"]
        if row.get(key) is not None and row[key] <= target:
            return seen
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/sequence_transformer.py")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/batch_efficiency-<model>-<date>.json)")
    args = parser.parse_args()
    if len(args.batches) < 2 or min(args.batches) < 1:
        parser.error("--batches needs at least two positive sizes")

    from autotune.config import TrainConfig
    from autotune.engine.gns import efficiency
    from autotune.search.model_stats import measure_isolated
    from autotune.search.worker import run_isolated
    from autotune.task import load_task

    task = load_task(args.model)
    stats = measure_isolated(task)
    b_noise, b0 = stats["gns"]["b_noise"], task.base.batch_size
    batches = sorted(set(args.batches))
    runs = {}
    for b in batches:
        cfg = TrainConfig.from_base(task.base, micro_batch_size=b)
        outcome = run_isolated(full_run, {"model_path": args.model, "config": cfg.to_dict()}, 3600)
        if not outcome.ok:
            raise SystemExit(f"the full run at batch {b} failed: {outcome.reason}")
        runs[b] = {"lr": cfg.lr, "history": outcome.value["history"]}
        print(f"  batch {b}: lr {cfg.lr:.2e}, best val loss {min(r['val_loss'] for r in runs[b]['history']):.4f}", flush=True)

    rows, targets = [], {}
    for key in ("val_loss", "train_loss"):
        targets[key] = max(min(r[key] for r in run["history"]) for run in runs.values())
    first = batches[0]
    for b in batches:
        predicted = efficiency(first, b0, b_noise) / efficiency(b, b0, b_noise)
        row = {"batch": b, "lr": runs[b]["lr"], "predicted_samples_ratio": predicted}
        for key in targets:
            mine, base = samples_to(runs[b]["history"], key, targets[key]), samples_to(runs[first]["history"], key, targets[key])
            row[f"samples_to_{key}"] = mine
            row[f"measured_samples_ratio_{key}"] = mine / base if mine and base else None
        rows.append(row)

    print(f"machine: {machine()}; model {args.model}; noise scale {b_noise:,.0f} (reference batch {b0}); "
          f"targets: val loss {targets['val_loss']:.4f}, train loss {targets['train_loss']:.4f}")
    print(f"batch | lr | samples vs batch {first}: predicted | measured (val loss) | measured (train loss)")
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    for r in rows:
        print(f"{r['batch']} | {r['lr']:.2e} | {r['predicted_samples_ratio']:.2f} | {fmt(r['measured_samples_ratio_val_loss'])} | "
              f"{fmt(r['measured_samples_ratio_train_loss'])}")
    out = args.out or ROOT / "benchmarks" / "results" / f"batch_efficiency-{Path(args.model).stem}-{dt.date.today()}.json"
    command = f"benchmarks/batch_efficiency.py --model {args.model} --batches {' '.join(map(str, batches))}"
    write_result(out, command, model=args.model, noise_scale=b_noise, reference_batch=b0, targets=targets, rows=rows,
                 runs=runs)


if __name__ == "__main__":
    main()
