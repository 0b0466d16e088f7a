"""Does a whole round of the selection's re-measurements run fast or slow together, and do
round-adjusted levels (``race.levels``) rank configs more consistently than medians?

Measures a few configs of one model in turns (A B C D, B C D A, ...) for ``--rounds``
rounds, each run a fresh trial process as the selection runs it. Then:

- the spread of each config's measurements, and of its ratio to the first config measured
  in the same round (if whole rounds drift, the per-round ratio spreads less);
- split halves: the rounds are split at random into two halves 500 times, each half
  estimates every config relative to the first, and the mean |log| of the ratio between
  the two halves' estimates is reported, for plain medians and for levels. The smaller,
  the more a second set of measurements would agree with the first.

    .venv/bin/python benchmarks/round_drift.py [--model examples/sequence_transformer.py] [--rounds 12]

Writes benchmarks/results/round_drift-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from _common import commit, machine

ROOT = Path(__file__).resolve().parents[1]
# Configs of the sequence model within about 30% of each other (goodput near the top).
CONFIGS = {
    "16x1 t1": {"micro_batch_size": 16, "cpu_threads": 1},
    "16x1 t2 bf16": {"micro_batch_size": 16, "cpu_threads": 2, "amp": "bf16"},
    "default": {},
    "16x1 t2": {"micro_batch_size": 16, "cpu_threads": 2},
}


def measure_rounds(model: str, configs: dict[str, dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    from autotune.config import TrainConfig
    from autotune.search.race import rotated
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import preload_for, run_isolated
    from autotune.model.task import load_task

    task = load_task(model)
    preload_for(task.path)
    budget = TrialBudget()
    rows = []
    for r in range(rounds):
        for name in rotated(list(configs), r):
            cfg = TrainConfig.from_base(task.base, **configs[name])
            start = time.time()
            out = run_isolated(measure, {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.to_dict()},
                               budget.timeout_s)
            rows.append({"round": r, "config": name, "started": start,
                         "throughput_samples_per_s": out.value.get("throughput_samples_per_s") if out.ok else None})
            print(f"round {r:2d}  {name:<14} {rows[-1]['throughput_samples_per_s'] or 0:8.0f} samples/s", flush=True)
    return rows


def estimates(values: dict[tuple[int, str], float], names: list[str], rounds: list[int], how: str) -> dict[str, float]:
    """Each config relative to the first, from the given rounds, by plain medians or levels."""
    from autotune.search.race import levels

    if how == "median":
        est = {n: statistics.median(values[(r, n)] for r in rounds if (r, n) in values) for n in names}
    else:
        got = levels([{r: values[(r, n)] for r in rounds if (r, n) in values} for n in names])
        est = dict(zip(names, got))
    return {n: est[n] / est[names[0]] for n in names}


def analyse(rows: list[dict[str, Any]], halves: int = 500) -> dict[str, Any]:
    names = list(dict.fromkeys(r["config"] for r in rows))
    rounds = sorted({r["round"] for r in rows})
    values = {(r["round"], r["config"]): r["throughput_samples_per_s"] for r in rows if r["throughput_samples_per_s"]}
    spread = {}
    for n in names:
        raw = [values[(r, n)] for r in rounds if (r, n) in values]
        paired = [values[(r, n)] / values[(r, names[0])] for r in rounds if (r, n) in values and (r, names[0]) in values]
        spread[n] = {"cv": statistics.stdev(raw) / statistics.fmean(raw),
                     "cv_of_ratio_to_first_same_round": statistics.stdev(paired) / statistics.fmean(paired) if n != names[0] else 0.0}
    rng = random.Random(0)
    disagreement: dict[str, list[float]] = {"median": [], "level": []}
    for _ in range(halves):
        order = rounds[:]
        rng.shuffle(order)
        a, b = sorted(order[: len(order) // 2]), sorted(order[len(order) // 2:])
        for how, seen in disagreement.items():
            ea, eb = estimates(values, names, a, how), estimates(values, names, b, how)
            seen.append(statistics.fmean(abs(math.log(ea[n] / eb[n])) for n in names[1:]))
    return {
        "relative_to_first": {how: estimates(values, names, rounds, how) for how in ("median", "level")},
        "spread": spread,
        "split_half_mean_abs_log_ratio": {how: statistics.fmean(v) for how, v in disagreement.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/sequence_transformer.py")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = measure_rounds(args.model, CONFIGS, args.rounds)
    result = analyse(rows)
    at = commit()
    out = args.out or ROOT / "benchmarks" / "results" / f"round_drift-{dt.date.today()}.json"
    out.write_text(json.dumps({
        "machine": machine(),
        "commit": at, "command": f"benchmarks/round_drift.py --model {args.model} --rounds {args.rounds}",
        "configs": CONFIGS, **result, "runs": rows}, indent=2) + "\n")
    for how, v in result["relative_to_first"].items():
        print(f"{how:>6}: " + ", ".join(f"{n} {x:.3f}" for n, x in v.items()))
    for n, s in result["spread"].items():
        print(f"{n:<14} cv {s['cv']:.3f}, cv of its ratio to {list(CONFIGS)[0]!r} in the same round {s['cv_of_ratio_to_first_same_round']:.3f}")
    d = result["split_half_mean_abs_log_ratio"]
    print(f"split halves disagree by {d['median']:.3f} (medians) and {d['level']:.3f} (levels), mean |log ratio|")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
