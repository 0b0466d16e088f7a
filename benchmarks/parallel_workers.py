"""How much faster does a fixed trial budget finish with 2 workers than with 1?

Runs ``autotune run MODEL --trials N --workers W`` for W = 1 and 2, alternating
(1, 2, 1, 2, ... for ``--repeats`` rounds), each on a fresh study, and reports per run:

- search wall time: from the first trial's start to the last trial's end, in the study;
- whole command wall time (profile, probe, search, selection, one-epoch final run);
- measured trials, and the median trial time (ask to tell) of the measured trials;
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
    import optuna
    import yaml

    out = work / f"w{workers}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "autotune", "run", model, "--out", str(out), "--trials", str(trials), "--workers",
           str(workers), "--epochs", "1", "--no-progress", "--no-warm-start", "--profiles", str(work / "profiles")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=Path(model).stem, storage=f"sqlite:///{out / 'study.db'}")
    ran = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    measured = [t for t in ran if t.user_attrs.get("status") not in ("infeasible", "duplicate", "stale")]
    search = (max(t.datetime_complete for t in ran) - min(t.datetime_start for t in ran)).total_seconds()
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    best = max((t for t in measured if t.value is not None), key=lambda t: t.value)
    return {
        "workers": workers,
        "command_seconds": wall,
        "search_seconds": search,
        "measured_trials": len(measured),
        "median_trial_seconds": statistics.median(t.user_attrs.get("trial_seconds", 0.0) for t in measured),
        "workers_seen": sorted({t.user_attrs.get("worker", "") for t in measured}),
        "best_trial_throughput": best.user_attrs.get("throughput_samples_per_s"),
        "best_trial_config": best.user_attrs.get("config"),
        "picked_throughput_remeasured": tuned["measured"]["throughput_samples_per_s"],
        "picked_config": tuned["train"],
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
                print(f"round {r + 1}, {workers} worker(s): search {row['search_seconds']:.1f} s, command "
                      f"{row['command_seconds']:.1f} s, {row['measured_trials']} measured trials, median trial "
                      f"{row['median_trial_seconds']:.2f} s, best trial {row['best_trial_throughput']:,.0f} samples/s",
                      flush=True)
    by = {w: [r for r in runs if r["workers"] == w] for w in (1, 2)}
    summary = {f"{k}_ratio_2_over_1": statistics.median(r[k] for r in by[2]) / statistics.median(r[k] for r in by[1])
               for k in ("search_seconds", "command_seconds", "median_trial_seconds")}
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
