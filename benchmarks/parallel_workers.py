"""How much faster does a fixed trial budget finish with 2 workers than with 1?

Tunes MODEL with ``pipeline.tune`` (what ``autotune run`` does before its final run:
profile, memory probe, model statistics, search, selection, tuned.yaml) with
``workers`` = 1 and 2, alternating (1, 2, 1, 2, ... for ``--repeats`` rounds), each on a
fresh study, and reports per run:

- search wall time: from the first trial's start to the last trial's end, in the study;
- tune wall time (profile, probe, statistics, search, selection);
- measured trials (the budget), and the median trial time (ask to tell);
- the best trial's throughput, and the picked config's re-measured throughput.

    .venv/bin/python benchmarks/parallel_workers.py [--model examples/digits_cnn.py] [--trials 16] [--repeats 2]

Writes benchmarks/results/parallel_workers-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(model: str, trials: int, workers: int, work: Path) -> dict:
    from autotune.workflow import pipeline
    from autotune.search import SearchBudget
    from autotune.search.study import counts

    out = work / f"w{workers}-{time.time_ns()}"
    opts = pipeline.RunOptions(out=out, budget=SearchBudget(n_trials=trials), workers=workers, progress=False,
                               profiles=None, warm_start=False)
    start = time.perf_counter()
    tuning = pipeline.tune(model, opts, log=lambda line: None)
    wall = time.perf_counter() - start
    ran = [t for t in tuning.study.trials if t.datetime_start and t.datetime_complete]
    measured = [t for t in ran if counts(t)]
    search = (max(t.datetime_complete for t in ran) - min(t.datetime_start for t in ran)).total_seconds()
    best = max((t for t in measured if t.value is not None), key=lambda t: t.value)
    return {
        "workers": workers,
        "tune_seconds": wall,
        "search_seconds": search,
        "measured_trials": len(measured),
        "asked_trials": len(ran),
        "median_trial_seconds": statistics.median(t.user_attrs.get("trial_seconds", 0.0) for t in measured),
        "workers_seen": len({t.user_attrs.get("worker", "") for t in measured}),
        "best_trial_throughput": best.user_attrs.get("throughput_samples_per_s"),
        "best_trial_config": best.user_attrs.get("config"),
        "picked_throughput_remeasured": tuning.tuned.measured["throughput_samples_per_s"],
        "picked_config": tuning.tuned.train.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/digits_cnn.py")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="autotune-parallel-") as tmp:
        for r in range(args.repeats):
            for workers in (1, 2):
                row = one_run(args.model, args.trials, workers, Path(tmp))
                runs.append(row)
                print(f"round {r + 1}, {workers} worker(s): search {row['search_seconds']:.1f} s, tune "
                      f"{row['tune_seconds']:.1f} s, {row['measured_trials']} measured trials, median trial "
                      f"{row['median_trial_seconds']:.2f} s, best trial {row['best_trial_throughput']:,.0f} samples/s",
                      flush=True)
    by = {w: [r for r in runs if r["workers"] == w] for w in (1, 2)}
    summary = {f"{k}_ratio_2_over_1": statistics.median(r[k] for r in by[2]) / statistics.median(r[k] for r in by[1])
               for k in ("search_seconds", "tune_seconds", "median_trial_seconds")}
    print(json.dumps(summary, indent=1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "commit": commit,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": args.model,
        "trials": args.trials,
        "runs": runs,
        "summary": summary,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"parallel_workers-{dt.date.today()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
