"""How long should one run of the selection's race be?

The race (``search/select.py``) re-measures its candidates in fresh processes. A run of
``w`` timing windows costs its fixed start (process, data, model, warm-up steps) plus
``w`` windows. If a process runs fast or slow as a whole, more windows buy little: two
short runs tell more than one long one. This measures it: per model, two configs, runs
of 5 windows (a trial's) and of 2 (a race run's) in turns (A5 B5 A2 B2, then rotated),
for ``--rounds`` rounds. Per config and run length: the median wall time of a run, the
coefficient of variation (CV) of the runs' throughputs, and CV^2 x wall time, the
variance of a mean of runs after one second of measuring; the ratio of the last for 5
windows over 2 windows says how much more a second of 2-window runs tells (above 1:
shorter runs are better).

    .venv/bin/python benchmarks/race_runs.py [--rounds 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import commit, machine

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "examples/digits_cnn.py": [{"micro_batch_size": 64, "amp": "bf16"}, {"micro_batch_size": 256}],
    "examples/breast_cancer_mlp.py": [{"micro_batch_size": 128, "cpu_threads": 2}, {"micro_batch_size": 128, "cpu_threads": 1}],
    "examples/sequence_transformer.py": [{"micro_batch_size": 128, "accumulation_steps": 2},
                                         {"micro_batch_size": 16, "num_workers": 2, "persistent_workers": True}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--windows", type=int, nargs=2, default=[5, 2], metavar=("LONG", "SHORT"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"race_runs-{dt.date.today()}.json")
    args = parser.parse_args()

    from autotune.config import TrainConfig
    from autotune.search import worker
    from autotune.search.race import rotated
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated
    from autotune.model.task import load_task

    for model in CONFIGS:
        worker.preload_for(load_task(model).path)
    rows: list[dict[str, Any]] = []
    for model, knobs in CONFIGS.items():
        task = load_task(model)
        arms = [(i, w) for w in args.windows for i in range(len(knobs))]
        runs: dict[tuple[int, int], list[tuple[float, float]]] = {arm: [] for arm in arms}
        for r in range(args.rounds):
            for i, w in rotated(arms, r):
                budget = TrialBudget(windows=w)
                cfg = TrainConfig.from_base(task.base, **knobs[i])
                start = time.perf_counter()
                out = run_isolated(measure, {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.to_dict()},
                                   budget.timeout_s)
                if out.ok and out.value.get("throughput_samples_per_s"):
                    runs[(i, w)].append((time.perf_counter() - start, out.value["throughput_samples_per_s"]))
        for i, kw in enumerate(knobs):
            row: dict[str, Any] = {"model": model, "config": kw}
            for w in args.windows:
                walls, tps = zip(*runs[(i, w)])
                cv = statistics.stdev(tps) / statistics.fmean(tps)
                row[f"w{w}"] = {"runs": len(tps), "wall_s": statistics.median(walls), "cv": cv,
                                "median_samples_per_s": statistics.median(tps), "cv2_x_wall": cv * cv * statistics.median(walls),
                                "throughputs": list(tps)}
            long, short = (row[f"w{w}"] for w in args.windows)
            row["information_per_second_short_over_long"] = long["cv2_x_wall"] / short["cv2_x_wall"]
            rows.append(row)
            print(f"{Path(model).stem} {kw}: wall {long['wall_s']:.2f} s / {short['wall_s']:.2f} s, "
                  f"CV {long['cv']:.3f} / {short['cv']:.3f}, median {long['median_samples_per_s']:,.0f} / "
                  f"{short['median_samples_per_s']:,.0f}; per second, short runs tell "
                  f"{row['information_per_second_short_over_long']:.2f}x", flush=True)
    at = commit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine(),
        "commit": at, "command": f"benchmarks/race_runs.py --rounds {args.rounds} --windows {args.windows[0]} {args.windows[1]}",
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
