"""Does anything leak from one trial into the next, or into the tuner?

Runs a study of ``--trials`` real trials (the tiny test MLP, fault-free configs mixed
with the faulty ones of ``tests/assets/faulty_mlp.py``: an infinite loss, an abort, a
hang ended by the trial timeout, an out-of-memory under a memory cap, an exception in the
dataset) through ``run_search`` in this process, and records after every trial: the
tuner's resident memory (VmRSS), its open file descriptors, its live child processes,
and each trial process's own peak memory (from the trial's measurements). Prints the
figures and writes benchmarks/results/trial_leaks-<date>.json.

    .venv/bin/python benchmarks/trial_leaks.py [--trials 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    import tempfile

    import optuna

    from autotune.search import SearchBudget, TrialBudget, open_study, parse_space, run_search
    from autotune.search.worker import run_isolated
    from autotune.model.task import load_task
    from test_faults import _children, _noop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    task = load_task(ROOT / "tests" / "assets" / "faulty_mlp.py")
    space = parse_space({"name": "leaks", "params": {"micro_batch_size": {"choices": [8, 12, 16, 24, 32]},
                                                    "num_workers": {"choices": [0, 2]}, "amp": {"choices": ["off"]},
                                                    "warmup": {"low": 0.0, "high": 0.5}}},
                        source="leak space")
    budget = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, timeout_s=8,
                         memory_limit_bytes=2 * 2**30)
    plan = [(8, 0)] * 4 + [(12, 0), (16, 0), (24, 0), (32, 0), (8, 2)]  # 4 good trials, then each fault once
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study, space = open_study(f"sqlite:///{tmp}/study.db", "leaks", task, space, space, "fp-bench", 0)
        for i in range(args.trials):
            micro, workers = plan[i % len(plan)]
            # A distinct warmup per trial: a repeated config would be answered from the first.
            study.enqueue_trial({"micro_batch_size": micro, "num_workers": workers, "amp": "off", "warmup": i / 1000})
        run_isolated(_noop, {}, 60)
        start = {"rss_kib": _rss_kib(), "fds": len(os.listdir("/proc/self/fd")), "children": len(_children())}
        t0 = time.perf_counter()

        def after(trial: optuna.trial.FrozenTrial) -> None:
            rows.append({"trial": trial.number, "status": trial.user_attrs.get("status"),
                         "rss_kib": _rss_kib(), "fds": len(os.listdir("/proc/self/fd")), "children": len(_children()),
                         "trial_peak_memory_bytes": trial.user_attrs.get("peak_memory_bytes")})

        run_search(study, task, space, SearchBudget(n_trials=args.trials, trial=budget, prune_below=0.0),
                   progress=False, on_trial=after)
        seconds = time.perf_counter() - t0
    measured = [r for r in rows if r["status"] != "duplicate"]
    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    first, last = (measured[0], measured[-1]) if measured else (start, start)
    summary = {
        "trials": len(rows), "measured": len(measured), "statuses": statuses, "seconds": seconds,
        "tuner_rss_kib": {"start": start["rss_kib"], "after_first": first["rss_kib"], "end": rows[-1]["rss_kib"] if rows else None,
                          "max": max((r["rss_kib"] for r in rows), default=None)},
        "fds": {"start": start["fds"], "end": rows[-1]["fds"] if rows else None, "max": max((r["fds"] for r in rows), default=None)},
        "children": {"start": start["children"], "end": rows[-1]["children"] if rows else None,
                     "max": max((r["children"] for r in rows), default=None)},
        "trial_peak_memory_bytes_ok": sorted({r["trial_peak_memory_bytes"] for r in rows if r["status"] == "ok"}),
    }
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
              "command": " ".join(sys.argv), "summary": summary, "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / f"trial_leaks-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
