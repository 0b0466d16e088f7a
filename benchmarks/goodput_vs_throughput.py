"""Which config reaches a good model sooner: the model file's BASE, the throughput pick or the goodput pick?

For each model, in one run on this machine:

1. ``pipeline.tune`` at the default budget, once with ``--objective goodput`` (the default)
   and once with ``--objective throughput``: the two picks, and the basis goodput's
   statistical efficiency rested on (or why it fell back to throughput).
2. Full training runs (the model file's epochs) of three arms, BASE (the model file's own
   config), the throughput pick and the goodput pick, interleaved A B C A B C for
   ``--repeats`` rounds, each in a fresh process, with an evaluation every ``eval_every``
   samples (the least common multiple of the arms' effective batches, so all are checked
   at the same sample counts, at optimizer-step boundaries) and the clock stopped while
   evaluating.
3. Per run, the training seconds until the validation accuracy first reaches the model's
   target; the table gives the medians per arm and the median over rounds of each
   round's goodput / throughput and goodput / BASE ratios (the runs of a round ran one
   after another, so they share most of the machine's mood).

The goal: goodput's median ratio to the throughput pick at most 1.05 and to BASE at most
1.0, for every model.

    .venv/bin/python benchmarks/goodput_vs_throughput.py [--models digits_cnn ...] [--repeats 5] [--out FILE]

Prints a table and writes benchmarks/results/goodput_vs_throughput.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]


def full_run(model_path: str, config: dict[str, Any], eval_every: int) -> dict[str, Any]:
    """A full training run of ``config``, evaluated after each epoch and every
    ``eval_every`` samples (in a trial process)."""
    from autotune.config import TrainConfig
    from autotune.engine.loop import train
    from autotune.model.task import load_task

    task = load_task(model_path, validate=False)
    result = train(task, TrainConfig.from_dict(config), eval_each_epoch=True, eval_every_samples=eval_every)
    return {"history": result.history, "seconds": result.seconds, "checks": result.checks}


def time_to_target_checked(checks: list[dict[str, Any]], target: float) -> tuple[float | None, int | None]:
    """Training seconds and samples until a check first reaches ``target`` accuracy."""
    for c in checks:
        if (c.get("val_accuracy") or 0.0) >= target:
            return c["train_seconds"], c["samples"]
    return None, None


MODELS = {  # the validation accuracy each model's full run reaches well before its last epoch
    "digits_cnn": 0.97,
    "breast_cancer_mlp": 0.95,
    "sequence_transformer": 0.9,
    "hf_text_classifier": 0.9,
    "image_folder": 0.8,
}
ARMS = ("base", "throughput", "goodput")


def tune_picks(model: str, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """BASE and the two objectives' picks, as full configs, with what each tuning measured."""
    from autotune.workflow import pipeline
    from autotune.config import TrainConfig
    from autotune.model.task import load_task

    base = load_task(model, validate=False).base
    picks: dict[str, Any] = {"base": TrainConfig.from_base(base, micro_batch_size=base.batch_size)}
    tuning: dict[str, Any] = {}
    for objective in ("throughput", "goodput"):
        opts = pipeline.RunOptions(out=work / objective, objective=objective, progress=False, warm_start=False,
                                   profiles=work / "profiles")
        start = time.perf_counter()
        t = pipeline.tune(model, opts, log=lambda *_: None)
        picks[objective] = t.tuned.train
        tuning[objective] = {"seconds": time.perf_counter() - start,
                             "noise_scale": t.tuned.measured.get("noise_scale"),
                             "speedup_vs_default": t.tuned.measured.get("speedup_vs_default")}
    return picks, tuning


def one_model(name: str, target: float, repeats: int) -> dict[str, Any]:
    """Tune, then run the three arms interleaved; the per-model summary and runs."""
    from autotune.search.worker import run_isolated

    model = str(ROOT / "examples" / f"{name}.py")
    picks, tuning = tune_picks(model, Path(tempfile.mkdtemp(prefix="autotune-objectives-")))
    for arm, cfg in picks.items():
        print(f"  {name} {arm}: micro-batch {cfg.micro_batch_size} x {cfg.accumulation_steps} = "
              f"{cfg.effective_batch_size}, amp {cfg.amp}, workers {cfg.num_workers}, lr {cfg.lr:.3g}", flush=True)
    basis = (tuning["goodput"].get("noise_scale") or {}).get("basis")
    print(f"  {name} goodput basis: {basis}", flush=True)
    eval_every = math.lcm(*(cfg.effective_batch_size for cfg in picks.values()))
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for _ in range(repeats):
        for arm in ARMS:
            outcome = run_isolated(full_run, {"model_path": model, "config": picks[arm].to_dict(), "eval_every": eval_every}, 3600)
            if not outcome.ok:
                raise SystemExit(f"{name}: the {arm} arm's full run failed: {outcome.reason}")
            hist, checks = outcome.value["history"], outcome.value["checks"]
            seconds, samples = time_to_target_checked(checks, target)
            runs[arm].append({"time_to_target_s": seconds, "samples_to_target": samples,
                              "final_val_accuracy": hist[-1]["val_accuracy"],
                              "train_seconds": sum(r["seconds"] for r in hist)})
    summary = {arm: {"effective_batch": picks[arm].effective_batch_size,
                     "reached": sum(r["time_to_target_s"] is not None for r in rs),
                     "median_time_to_target_s": _median([r["time_to_target_s"] for r in rs]),
                     "median_samples_to_target": _median([r["samples_to_target"] for r in rs]),
                     "median_final_val_accuracy": statistics.median(r["final_val_accuracy"] for r in rs)}
               for arm, rs in runs.items()}
    ratios = {other: _round_ratios(runs["goodput"], runs[other]) for other in ("throughput", "base")}
    return {"target": target, "eval_every_samples": eval_every, "picks": {k: v.to_dict() for k, v in picks.items()},
            "tuning": tuning, "summary": summary, "ratios": ratios, "runs": runs,
            "passes": _passes(ratios)}


def _median(values: list[float | None]) -> float | None:
    """The median, or None when any run missed the target."""
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _round_ratios(goodput: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's goodput / other time to target, and their median (None when a run of
    either missed the target: then the arm that missed is slower by more than any ratio)."""
    pairs = [(a["time_to_target_s"], b["time_to_target_s"]) for a, b in zip(goodput, other)]
    per = [a / b if a is not None and b is not None else None for a, b in pairs]
    missed = {"goodput": sum(a is None for a, _ in pairs), "other": sum(b is None for _, b in pairs)}
    return {"per_round": per, "median": _median(per), "missed": missed}


def _passes(ratios: dict[str, Any]) -> bool:
    """Goodput at most 5% slower than the throughput pick and no slower than BASE (medians);
    a goodput run that missed the target fails, one of the other arm's counts for goodput."""
    def ok(r: dict[str, Any], bound: float) -> bool:
        if r["missed"]["goodput"]:
            return False
        if r["median"] is None:  # only the other arm missed
            return True
        return r["median"] <= bound
    return ok(ratios["throughput"], 1.05) and ok(ratios["base"], 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the three arms")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "goodput_vs_throughput.json")
    args = parser.parse_args()
    results = {}
    for name in args.models:
        results[name] = one_model(name, MODELS[name], args.repeats)
        print(_row(name, results[name]), flush=True)
    host = machine()
    print(f"\nmachine: {host}; medians of {args.repeats} interleaved rounds")
    print("| model (target) | effective batch B / T / G | median s to target B / T / G | G / T (median of rounds) | "
          "G / B | goodput basis | passes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(_row(name, r))
    command = f"benchmarks/goodput_vs_throughput.py --models {' '.join(args.models)} --repeats {args.repeats}"
    write_result(args.out, command, goal="goodput / throughput <= 1.05 and goodput / BASE <= 1.0 (median time to target)",
                 passed=sum(r["passes"] for r in results.values()), models=results)


def _row(name: str, r: dict[str, Any]) -> str:
    fmt = lambda x, spec=".2f": "-" if x is None else format(x, spec)  # noqa: E731
    s = r["summary"]
    basis = ((r["tuning"]["goodput"].get("noise_scale") or {}).get("basis") or "").replace("|", "/")
    return (f"| {name} ({r['target']}) | {' / '.join(str(s[a]['effective_batch']) for a in ARMS)} | "
            f"{' / '.join(fmt(s[a]['median_time_to_target_s']) for a in ARMS)} | {fmt(r['ratios']['throughput']['median'])} | "
            f"{fmt(r['ratios']['base']['median'])} | {basis} | {'yes' if r['passes'] else 'no'} |")


if __name__ == "__main__":
    main()
