"""Does a warm start reach a good config in fewer trials? Measured side by side in one run.

1. Source machine: the whole machine. The model is tuned there and the result recorded
   in a temporary profiles folder, as `autotune run` does.
2. Target machine: the same machine restricted to one core with `taskset -c 0`, which
   autotune profiles as a different hardware class (1 logical core, other fingerprint),
   and where the fastest config differs. There, for several sampler seeds, a study starts
   cold (no saved results) and warm (from the source's results), with the same budget.
3. For each study: the number of measured trials until one reached 95% of the best
   throughput any target study found.

    .venv/bin/python benchmarks/warm_start.py [--model examples/digits_cnn.py] [--trials 10] [--seeds 3] [--source-trials 24]

Prints a table and writes benchmarks/results/warm_start-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import commit, machine

ROOT = Path(__file__).resolve().parents[1]


def search(model: str, out: Path, profiles: Path, warm: bool, seed: int, trials: int, record: bool) -> list[float]:
    """One study on this process's hardware; returns measured throughputs in trial order."""
    from autotune.workflow import pipeline
    from autotune.machines import results
    from autotune.hardware import collect_profile
    from autotune.search import SearchBudget, enqueue_default, gate, load_space, open_study, run_search, select, warmstart
    from autotune.model.task import load_task

    out.mkdir(parents=True, exist_ok=True)
    task = load_task(model)
    profile = collect_profile()
    raw = load_space("default")
    space = gate(raw, pipeline._facts(profile, task))
    storage = f"sqlite:///{out / 'study.db'}"
    study, space = open_study(storage, task.name, task, raw, space, profile.fingerprint, seed)
    enqueue_default(study, space)
    if warm:
        plan = warmstart.plan(profiles, profile, task.name, space)
        if plan is None:
            raise SystemExit("no saved results to warm-start from")
        warmstart.apply(study, plan)
    budget = SearchBudget(n_trials=trials)
    run_search(study, task, space, budget, progress=False)
    if record:
        sel = select(study, task, budget.trial, progress=False)
        tuned = pipeline._tuned_config(task, space, profile, study, sel, storage)
        results.record(profiles, profile, pipeline._result_entry(task, space, study, tuned))
    return [t.value for t in study.trials if t.user_attrs.get("status") == "ok"]


def trials_to_reach(values: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def _child(args: argparse.Namespace) -> None:
    values = search(args.model, Path(args.out), Path(args.profiles), args.warm, args.seed, args.trials, args.record)
    print(json.dumps({"values": values}))


def _run_child(args: argparse.Namespace, out: Path, warm: bool, seed: int, record: bool, pin: bool) -> list[float]:
    trials = args.source_trials if record else args.trials
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--out", str(out), "--profiles", str(args.profiles),
           "--seed", str(seed), "--trials", str(trials)]
    cmd += ["--warm"] if warm else []
    cmd += ["--record"] if record else []
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["values"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/digits_cnn.py")
    parser.add_argument("--trials", type=int, default=10, help="budget of each target study")
    parser.add_argument("--source-trials", type=int, default=24, help="budget of the source study (a thorough earlier tuning)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--profiles", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is needed to make the one-core target machine")
    work = Path(tempfile.mkdtemp(prefix="autotune-warm-"))
    args.profiles = work / "profiles"
    source = _run_child(args, work / "source", warm=False, seed=100, record=True, pin=False)
    runs = {}
    for seed in range(args.seeds):
        for mode in ("cold", "warm"):
            runs[(mode, seed)] = _run_child(args, work / f"{mode}-{seed}", warm=mode == "warm", seed=seed, record=False, pin=True)
    best = max(v for values in runs.values() for v in values)
    rows = []
    for (mode, seed), values in runs.items():
        rows.append({"mode": mode, "seed": seed, "trials_to_95": trials_to_reach(values, 0.95 * best),
                     "best_samples_per_s": max(values), "values": values})
    _print(args, source, best, rows)
    out = ROOT / "benchmarks" / "results" / f"warm_start-{Path(args.model).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "machine": machine(), "trials": args.trials,
                               "source_trials": args.source_trials, "source_values": source,
                               "target_best_samples_per_s": best, "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def _print(args: argparse.Namespace, source: list[float], best: float, rows: list[dict]) -> None:
    print(f"machine: {machine()}")
    print(f"model {args.model}: source (whole machine, {args.source_trials} trials) best {max(source):,.0f} samples/s; "
          f"target (taskset -c 0) best {best:,.0f} samples/s over all studies; budget {args.trials} trials")
    print(f"{'mode':<6}{'seed':>6}{'trials to 95% of best':>24}{'best samples/s':>17}")
    for r in rows:
        reached = r["trials_to_95"] if r["trials_to_95"] is not None else f">{len(r['values'])}"
        print(f"{r['mode']:<6}{r['seed']:>6}{reached!s:>24}{r['best_samples_per_s']:>17,.0f}")
    for mode in ("cold", "warm"):
        got = [r["trials_to_95"] or len(r["values"]) + 1 for r in rows if r["mode"] == mode]
        print(f"{mode}: median trials to 95% = {statistics.median(got)} (a study that never got there counts as budget + 1)")


if __name__ == "__main__":
    main()
