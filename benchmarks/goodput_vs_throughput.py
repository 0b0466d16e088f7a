"""Which pick reaches a good model sooner: the one with the most goodput or the most samples/s?

In one run on this machine:

1. ``pipeline.tune`` at the default budget, once with ``--objective goodput`` (the default)
   and once with ``--objective throughput``; the two picks' effective batches are printed.
   With ``--picks-from``, the picks are read from a ``search_vs_grid.py`` result instead
   (it tunes the same way, with both objectives).
2. Full training runs of both picks (the model file's epochs), alternating A B A B for
   ``--repeats`` pairs, each in a fresh process, with an evaluation after every epoch and
   every ``--eval-every`` samples (default: the least common multiple of the two picks'
   effective batches, so both are evaluated at the same sample counts, at optimizer-step
   boundaries), with the run's clock stopped while evaluating.
3. For each run: the training wall time (evaluation excluded) until the validation
   accuracy first reaches ``--target``, at those checks and at epoch ends (an epoch is
   coarse: a pick that gets there early in an epoch is timed at its end); the table gives
   the medians, and a line under it each A-B pair's ratio of the two times and in how
   many pairs the goodput pick got there first.

    .venv/bin/python benchmarks/goodput_vs_throughput.py [--model examples/digits_cnn.py] [--target 0.97] [--repeats 3]
        [--eval-every SAMPLES] [--picks-from benchmarks/results/search_vs_grid-DATE.json] [--out RESULT.json]

Prints a table and writes benchmarks/results/goodput_vs_throughput-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import commit, machine

ROOT = Path(__file__).resolve().parents[1]


def full_run(model_path: str, config: dict[str, Any], eval_every: int) -> dict[str, Any]:
    """A full training run of ``config``, evaluated after each epoch and every
    ``eval_every`` samples (in a trial process)."""
    from autotune.config import TrainConfig
    from autotune.engine.loop import train
    from autotune.task import load_task

    task = load_task(model_path, validate=False)
    result = train(task, TrainConfig.from_dict(config), eval_each_epoch=True, eval_every_samples=eval_every)
    return {"history": result.history, "seconds": result.seconds, "checks": result.checks}


def time_to_target(history: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds (evaluations excluded) until an epoch ends at ``target`` accuracy."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if (row.get("val_accuracy") or 0.0) >= target:
            return elapsed
    return None


def time_to_target_checked(checks: list[dict[str, Any]], target: float) -> tuple[float | None, int | None]:
    """Training seconds and samples until a check first reaches ``target`` accuracy."""
    for c in checks:
        if (c.get("val_accuracy") or 0.0) >= target:
            return c["train_seconds"], c["samples"]
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/digits_cnn.py")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy to reach")
    parser.add_argument("--repeats", type=int, default=3, help="full runs of each pick, alternating")
    parser.add_argument("--eval-every", type=int, help="samples between evaluations (default: the least common multiple of "
                                                         "the picks' effective batches)")
    parser.add_argument("--picks-from", type=Path, help="a search_vs_grid.py result holding this model's picks")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/goodput_vs_throughput-<model>.json)")
    args = parser.parse_args()
    from autotune import pipeline
    from autotune.search.worker import run_isolated

    work = Path(tempfile.mkdtemp(prefix="autotune-objectives-"))
    picks, tuning = {}, {}
    if args.picks_from:
        picks, tuning = _read_picks(args.picks_from, args.model)
    for objective in () if picks else ("goodput", "throughput"):
        opts = pipeline.RunOptions(out=work / objective, objective=objective, progress=False)
        start = time.perf_counter()
        t = pipeline.tune(args.model, opts, log=lambda *_: None)
        picks[objective] = t.tuned.train
        tuning[objective] = {"seconds": time.perf_counter() - start, "measured": t.tuned.measured}
    for objective, cfg in picks.items():
        print(f"{objective} pick: micro-batch {cfg.micro_batch_size} x {cfg.accumulation_steps} = effective "
              f"{cfg.effective_batch_size}, amp {cfg.amp}, workers {cfg.num_workers}, lr {cfg.lr:.3g}")
    eval_every = args.eval_every or math.lcm(*(cfg.effective_batch_size for cfg in picks.values()))
    print(f"evaluating every {eval_every} samples and after every epoch")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in picks}
    for _ in range(args.repeats):
        for objective, cfg in picks.items():
            outcome = run_isolated(full_run, {"model_path": args.model, "config": cfg.to_dict(), "eval_every": eval_every}, 3600)
            if not outcome.ok:
                raise SystemExit(f"the {objective} pick's full run failed: {outcome.reason}")
            hist, checks = outcome.value["history"], outcome.value["checks"]
            seconds, samples = time_to_target_checked(checks, args.target)
            runs[objective].append({"time_to_target_s": seconds, "samples_to_target": samples,
                                    "epoch_time_to_target_s": time_to_target(hist, args.target),
                                    "final_val_accuracy": hist[-1]["val_accuracy"],
                                    "train_seconds": sum(r["seconds"] for r in hist),
                                    "accuracy_by_epoch": [r["val_accuracy"] for r in hist],
                                    "seconds_by_epoch": [r["seconds"] for r in hist],
                                    "checks": checks})
    summary = {}
    for objective, rs in runs.items():
        reached = [r["time_to_target_s"] for r in rs if r["time_to_target_s"] is not None]
        by_epoch = [r["epoch_time_to_target_s"] for r in rs if r["epoch_time_to_target_s"] is not None]
        samples = [r["samples_to_target"] for r in rs if r["samples_to_target"] is not None]
        summary[objective] = {
            "effective_batch": picks[objective].effective_batch_size,
            "runs_reaching_target": f"{len(reached)}/{len(rs)}",
            "median_time_to_target_s": statistics.median(reached) if len(reached) == len(rs) else None,
            "median_samples_to_target": statistics.median(samples) if len(samples) == len(rs) else None,
            "median_epoch_time_to_target_s": statistics.median(by_epoch) if len(by_epoch) == len(rs) else None,
            "median_train_seconds": statistics.median(r["train_seconds"] for r in rs),
            "median_final_val_accuracy": statistics.median(r["final_val_accuracy"] for r in rs),
        }
    pairs = paired(runs)
    host = machine()
    print(f"machine: {host}; model {args.model}; target val accuracy {args.target}; checks every {eval_every} samples")
    print(f"{'objective':<11}{'eff. batch':>11}{'reached':>9}{'median s to target':>20}{'samples':>9}"
          f"{'(epoch ends)':>14}{'median train s':>16}{'final acc':>11}")
    for objective, s in summary.items():
        t, n, e = s["median_time_to_target_s"], s["median_samples_to_target"], s["median_epoch_time_to_target_s"]
        print(f"{objective:<11}{s['effective_batch']:>11}{s['runs_reaching_target']:>9}{'-' if t is None else f'{t:.2f}':>20}"
              f"{'-' if n is None else f'{n:.0f}':>9}{'-' if e is None else f'{e:.2f}':>14}"
              f"{s['median_train_seconds']:>16.1f}{s['median_final_val_accuracy']:>11.4f}")
    if pairs:
        print(f"goodput pick sooner in {pairs['goodput_sooner']} of {pairs['pairs']} A-B pairs; time ratios (goodput / "
              f"throughput) {', '.join(f'{r:.2f}' for r in pairs['ratios'])}, median {pairs['median_ratio']:.2f}")
    at = commit()
    out = args.out or ROOT / "benchmarks" / "results" / f"goodput_vs_throughput-{Path(args.model).stem}.json"
    out.write_text(json.dumps({"machine": host, "commit": at, "model": args.model, "target": args.target,
                               "eval_every_samples": eval_every,
                               "command": f"benchmarks/goodput_vs_throughput.py --model {args.model} --target {args.target} --repeats {args.repeats}"
                                          + (f" --eval-every {args.eval_every}" if args.eval_every else "")
                                          + (f" --picks-from {args.picks_from}" if args.picks_from else ""),
                               "picks": {k: v.to_dict() for k, v in picks.items()}, "tuning": tuning,
                               "summary": summary, "pairs": pairs, "runs": runs}, indent=2, default=str) + "\n")
    print(f"wrote {out}")


def paired(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The A-B pairs side by side: each pair's goodput / throughput time to target (the two
    runs of a pair ran one after the other, so they share most of the machine's mood),
    and in how many pairs the goodput pick got there first. None unless both picks
    reached the target in every run."""
    g, t = runs.get("goodput", []), runs.get("throughput", [])
    times = [(a["time_to_target_s"], b["time_to_target_s"]) for a, b in zip(g, t)]
    if not times or any(a is None or b is None for a, b in times):
        return None
    ratios = [a / b for a, b in times]
    return {"pairs": len(times), "goodput_sooner": sum(a < b for a, b in times), "ratios": ratios,
            "median_ratio": statistics.median(ratios)}


def _read_picks(path: Path, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two picks a search_vs_grid.py run made for ``model``, as full configs."""
    from autotune.config import TrainConfig
    from autotune.task import load_task

    rows = [r for r in json.loads(path.read_text())["models"] if Path(r["model"]).stem == Path(model).stem]
    if not rows:
        raise SystemExit(f"{path} has no result for {model}")
    base = load_task(model, validate=False).base
    picks, tuning = {}, {}
    for objective, got in rows[0]["tuning"].items():
        knobs = {k: v for k, v in got["pick"].items() if k != "lr"}
        cfg = TrainConfig.from_base(base, **knobs)
        if abs(cfg.lr - got["pick"]["lr"]) > 1e-12 * cfg.lr:
            raise SystemExit(f"{path}: the {objective} pick's lr {got['pick']['lr']} is not what its knobs give ({cfg.lr})")
        picks[objective], tuning[objective] = cfg, {"seconds": got["seconds"], "from": str(path)}
    return picks, tuning


if __name__ == "__main__":
    main()
