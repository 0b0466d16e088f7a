"""Which config reaches a good model sooner: the model file's BASE, the throughput pick or the goodput pick?

For each model, in one run on this machine:

1. ``pipeline.tune`` at the default budget, once with ``--objective goodput`` (the default)
   and once with ``--objective throughput``: the two picks, and the basis goodput's
   statistical efficiency rested on (or why it fell back to throughput). ``--picks FILE``
   takes the picks of an earlier result instead.
2. Full training runs (the model file's epochs) of three arms, BASE (the model file's own
   config), the throughput pick and the goodput pick, interleaved in rotated order (A B C,
   B C A, C A B, ...) for ``--repeats`` rounds, each in a fresh process; round ``r`` runs
   every arm with seed ``r``, so the rounds sample the luck of the initial weights and data
   order and each round's arms share it. Each run evaluates every ``eval_every`` samples
   (the least common multiple of the arms' effective batches, so all are checked at the
   same sample counts, at optimizer-step boundaries). An arm whose pick trains exactly as
   an earlier arm's (the same config once torch's default thread count is spelled out) is
   not run again: it shares that arm's runs, so a pick that is BASE's training compares
   with BASE at exactly 1, not at the machine's noise between two runs of one config.
3. Per run and target, the samples until the validation accuracy first reaches it
   (counted) times the run's own seconds per training sample (its whole training time over
   its samples, evaluation off the clock): its time to the target at the run's steady rate,
   which a slow second cannot move the way it moves a clock read at one instant. Two
   targets: ``early``, a fixed accuracy each model reaches in the first tenth of its run
   (``MODELS``), and ``late``, 99% of the median final accuracy of BASE's runs, the
   quality a user trains the whole run for, as time-to-train benchmarks set theirs near
   convergence. The table gives, per target, the median over rounds of each round's
   goodput / throughput and goodput / BASE ratios.

The goal: goodput's median ratio to the throughput pick at most 1.05 and to BASE at most
1.0, for every model.

    .venv/bin/python benchmarks/goodput_vs_throughput.py [--models digits_cnn ...] [--repeats 5] [--picks FILE] [--out FILE]

Prints a table and writes benchmarks/results/goodput_vs_throughput.json.
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

from _common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # the early target: a validation accuracy each model's BASE run reaches in its first tenth
    "digits_cnn": 0.97,
    "breast_cancer_mlp": 0.95,
    "sequence_transformer": 0.9,
    "hf_text_classifier": 0.9,
    "image_folder": 0.8,
}
LATE = 0.99  # the late target: this fraction of BASE's median final accuracy
ARMS = ("base", "throughput", "goodput")
TARGETS = ("early", "late")


def full_run(model_path: str, config: dict[str, Any], eval_every: int) -> dict[str, Any]:
    """A full training run of ``config``, evaluated every ``eval_every`` samples (in a trial
    process): the checks and the final accuracy."""
    from autotune.config import TrainConfig
    from autotune.engine.loop import train
    from autotune.model.task import load_task

    task = load_task(model_path, validate=False)
    result = train(task, TrainConfig.from_dict(config), eval_each_epoch=True, eval_every_samples=eval_every)
    return {"checks": [{k: c[k] for k in ("samples", "train_seconds", "val_accuracy")} for c in result.checks],
            "final_val_accuracy": result.history[-1]["val_accuracy"]}


def seconds_per_sample(run: dict[str, Any]) -> float:
    """The run's training seconds per sample up to its last check (evaluation off the clock)."""
    last = run["checks"][-1]
    return last["train_seconds"] / last["samples"]


def samples_to_target(checks: list[dict[str, Any]], target: float) -> int | None:
    """Samples until a check first reaches ``target`` accuracy (None if none did)."""
    return next((c["samples"] for c in checks if (c.get("val_accuracy") or 0.0) >= target), None)


def time_to_target(run: dict[str, Any], target: float) -> float | None:
    """Samples to ``target`` times the run's seconds per training sample."""
    samples = samples_to_target(run["checks"], target)
    return None if samples is None else samples * seconds_per_sample(run)


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


def one_model(name: str, early: float, repeats: int, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tune (or take ``earlier``'s picks), then run the three arms interleaved, a seed per
    round; the per-model summary and runs."""
    from autotune.config import TrainConfig
    from autotune.search.worker import run_isolated

    model = str(ROOT / "examples" / f"{name}.py")
    if earlier is None:
        picks, tuning = tune_picks(model, Path(tempfile.mkdtemp(prefix="autotune-objectives-")))
    else:
        picks = {arm: TrainConfig.from_dict(cfg) for arm, cfg in earlier["picks"].items()}
        tuning = earlier["tuning"]
    for arm, cfg in picks.items():
        print(f"  {name} {arm}: micro-batch {cfg.micro_batch_size} x {cfg.accumulation_steps} = "
              f"{cfg.effective_batch_size}, amp {cfg.amp}, threads {cfg.cpu_threads}, lr {cfg.lr:.3g}", flush=True)
    basis = (tuning["goodput"].get("noise_scale") or {}).get("basis")
    print(f"  {name} goodput basis: {basis}", flush=True)
    eval_every = math.lcm(*(cfg.effective_batch_size for cfg in picks.values()))
    same = same_runs(picks)
    distinct = tuple(arm for arm in ARMS if same[arm] == arm)
    for arm in ARMS:
        if same[arm] != arm:
            print(f"  {name} {arm}: trains as {same[arm]} does, so it shares {same[arm]}'s runs", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(repeats):
        for arm in distinct[r % len(distinct):] + distinct[:r % len(distinct)]:  # rotated: none always first or last
            config = {**picks[arm].to_dict(), "seed": r}
            outcome = run_isolated(full_run, {"model_path": model, "config": config, "eval_every": eval_every}, 3600)
            if not outcome.ok:
                raise SystemExit(f"{name}: the {arm} arm's full run failed: {outcome.reason}")
            runs[arm].append(outcome.value)
        for arm in ARMS:
            if same[arm] != arm:
                runs[arm].append(runs[same[arm]][-1])
    targets = {"early": early,
               "late": LATE * statistics.median(run["final_val_accuracy"] for run in runs["base"])}
    by_target = {label: compare(runs, target) for label, target in targets.items()}
    return {"targets": targets, "eval_every_samples": eval_every, "same_runs": same,
            "picks": {k: v.to_dict() for k, v in picks.items()}, "tuning": tuning, "by_target": by_target,
            "passes": {label: r["passes"] for label, r in by_target.items()}, "runs": runs}


def same_runs(picks: dict[str, Any]) -> dict[str, str]:
    """Each arm's runner: the first arm in ``ARMS`` whose config trains the same, itself if
    none. ``cpu_threads`` 0 is torch's default thread count, as in every run's process."""
    import torch

    def training(cfg: Any) -> dict[str, Any]:
        spelled = cfg.to_dict()
        spelled["cpu_threads"] = spelled.get("cpu_threads") or torch.get_num_threads()
        return spelled

    same: dict[str, str] = {}
    for i, arm in enumerate(ARMS):
        same[arm] = next((a for a in ARMS[:i] if same[a] == a and training(picks[a]) == training(picks[arm])), arm)
    return same


def compare(runs: dict[str, list[dict[str, Any]]], target: float) -> dict[str, Any]:
    """Each arm's samples and time to ``target`` per round, their medians, and goodput's
    per-round ratios to the other two arms."""
    times = {arm: [time_to_target(run, target) for run in rs] for arm, rs in runs.items()}
    summary = {arm: {"reached": sum(t is not None for t in times[arm]),
                     "samples_to_target": [samples_to_target(run["checks"], target) for run in rs],
                     "time_to_target_s": times[arm],
                     "median_time_to_target_s": _median(times[arm]),
                     "seconds_per_sample": [seconds_per_sample(run) for run in rs],
                     "median_final_val_accuracy": statistics.median(run["final_val_accuracy"] for run in rs)}
               for arm, rs in runs.items()}
    ratios = {other: _round_ratios(times["goodput"], times[other]) for other in ("throughput", "base")}
    return {"target": target, "summary": summary, "ratios": ratios, "passes": _passes(ratios)}


def _median(values: list[float | None]) -> float | None:
    """The median, or None when any run missed the target."""
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _round_ratios(goodput: list[float | None], other: list[float | None]) -> dict[str, Any]:
    """Each round's goodput / other time to target, and their median (None when a run of
    either missed the target: then the arm that missed is slower by more than any ratio)."""
    per = [a / b if a is not None and b is not None else None for a, b in zip(goodput, other)]
    missed = {"goodput": sum(a is None for a in goodput), "other": sum(b is None for b in other)}
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
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the three arms, a seed each")
    parser.add_argument("--picks", type=Path, help="take each model's three configs from this earlier result file "
                                                   "rather than tuning again")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "goodput_vs_throughput.json")
    args = parser.parse_args()
    earlier = json.loads(args.picks.read_text())["models"] if args.picks else {}
    missing = [name for name in args.models if args.picks and name not in earlier]
    if missing:
        parser.error(f"{args.picks} has no picks for {', '.join(missing)}")
    results = {}
    for name in args.models:
        results[name] = one_model(name, MODELS[name], args.repeats, earlier.get(name))
        print(*_rows(name, results[name]), sep="\n", flush=True)
    print(f"\nmachine: {machine()}; medians of {args.repeats} interleaved rounds, a seed each")
    print("| model | target | effective batch B / T / G | median s to target B / T / G | G / T (median of rounds) | "
          "G / B | goodput basis | passes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(*_rows(name, r), sep="\n")
    command = (f"benchmarks/goodput_vs_throughput.py --models {' '.join(args.models)} --repeats {args.repeats}"
               + (f" --picks {args.picks}" if args.picks else ""))
    write_result(args.out, command, goal="goodput / throughput <= 1.05 and goodput / BASE <= 1.0 (median time to target)",
                 passed={label: sum(r["passes"][label] for r in results.values()) for label in TARGETS},
                 models=results)


def _rows(name: str, r: dict[str, Any]) -> list[str]:
    fmt = lambda x, spec=".2f": "-" if x is None else format(x, spec)  # noqa: E731
    basis = ((r["tuning"]["goodput"].get("noise_scale") or {}).get("basis") or "").replace("|", "/")
    batches = " / ".join(str(r["picks"][a]["micro_batch_size"] * r["picks"][a]["accumulation_steps"]) for a in ARMS)
    shared = [f"{a[0].upper()} = {r['same_runs'][a][0].upper()}" for a in ARMS if r.get("same_runs", {}).get(a, a) != a]
    batches += f" ({', '.join(shared)})" if shared else ""
    rows = []
    for label in TARGETS:
        t = r["by_target"][label]
        s = t["summary"]
        rows.append(f"| {name} | {label} {t['target']:.3f} | {batches} | "
                    f"{' / '.join(fmt(s[a]['median_time_to_target_s']) for a in ARMS)} | "
                    f"{fmt(t['ratios']['throughput']['median'])} | {fmt(t['ratios']['base']['median'])} | "
                    f"{basis if label == 'early' else ''} | {'yes' if t['passes'] else 'no'} |")
    return rows


if __name__ == "__main__":
    main()
