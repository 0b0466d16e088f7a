"""Does goodput's noise-scale estimate predict what a larger batch costs in samples?

For each model, in a fresh process: the reference config (the model file's ``BASE``)
trains as a new study's measurement does (``model_stats.reach``: a few seconds, the noise
scale and its interval from per-example gradient norms in the second half). From that one
shared point, ``branches.check`` runs short branches at three effective batches (the
reference batch B0, ``4 x B0`` and ``8 x B0``; the learning rate scaled by the model's rule),
``--repeats`` times each with different data orders, and counts the samples each needs for
one loss drop on a fixed validation set. The table sets the measured sample ratios (median
over repeats) beside the ratios the estimate predicts, (1 + B/B_noise) / (1 + B0/B_noise).
Samples are counted, not timed, so this holds on a noisy machine.

A model passes when the prediction is within +-30% of the measurement at both larger
batches. The goal: at least 4 of the 5 models.

    .venv/bin/python benchmarks/batch_efficiency.py [--models digits_cnn ...] [--steps 48] [--repeats 3]
        [--from-start] [--estimate-at {warmup,start}] [--out FILE]

``--from-start`` branches from the initial weights and a fresh optimizer, each with the
full run's warmup at its batch: the sample cost a run pays to reach an early target.
``--estimate-at start`` observes the noise scale from the initial weights too, rather
than after the warmup, so that the estimate and the branches see the same steps.
``--predict-from check`` predicts as the study does: from the noise scale fitted to an
independent run of its own check (branches from the start at the reference batch and 4x
it, on data orders of their own), so 4x tests the check's repeatability and 8x its
extrapolation. The measured branches then cover the study check's window in samples
(``--steps`` defaults to the steps of 8x that fill it), so both read the same loss drop:
"one loss drop" is a fraction of the smallest drop in the window, so a longer window reads
a later, lower loss, where the ratios differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import ROOT, write_result

MODELS = ("digits_cnn", "breast_cancer_mlp", "sequence_transformer", "hf_text_classifier", "image_folder")
FACTORS = (1, 4, 8)
TOLERANCE = 0.30


def validate(model_path: str, steps: int, repeats: int, from_start: bool = False,
             estimate_at: str = "warmup", predict_from: str = "estimate") -> dict[str, Any]:
    """The estimate at the study's point of training, and branches from it (in a trial
    process); with ``from_start``, the branches start from the initial weights and a fresh
    optimizer instead, with the run's warmup, as a full run does."""
    from autotune.config import TrainConfig
    from autotune.search import branches
    from autotune.search.model_stats import CHECK_REPEATS, reach, start_point
    from autotune.search.objective import CHECK_FACTOR, decide_noise_scale, predicted_ratio
    from autotune.model.task import load_task

    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size)
    ref = reach(model_path, cfg.to_dict(), observe_from=estimate_at)
    point = branches.Point.of(ref.model, ref.optimizer)
    if from_start:
        import torch

        torch.manual_seed(cfg.seed)
        model = task.build_model().to(ref.device)
        point = branches.Point.of(model, task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay))
    check = branches.check(ref.task, ref.cfg, point, [f * ref.batch for f in FACTORS], steps=steps, repeats=repeats,
                           device=ref.device, warmup=from_start)
    est = ref.estimate.estimate
    fit = None
    if predict_from == "check":
        # The study's own check, on data orders of its own: its fitted noise scale, or none
        # (goodput then counts every sample alike: a predicted ratio of 1).
        fit = branches.check(ref.task, ref.cfg, start_point(ref), [ref.batch, CHECK_FACTOR * ref.batch],
                             repeats=CHECK_REPEATS, device=ref.device, warmup=True, seed_offset=100)
        est, basis = decide_noise_scale({"estimate": ref.estimate.estimate, "check": fit.to_dict()})
        fit = {**fit.to_dict(), "used": est, "basis": basis, "curves": None}
    ratios = check.ratios or {}
    rows = []
    for b in check.batches[1:]:
        predicted = (predicted_ratio(est, check.batches[0], b) if est else
                     1.0 if predict_from == "check" else None)
        measured = ratios.get(b)
        rows.append({"batch": b, "predicted": predicted, "measured": measured,
                     "predicted_over_measured": predicted / measured if predicted and measured else None,
                     "per_repeat": [r.get(b) / r[check.batches[0]] if r.get(b) and r.get(check.batches[0]) else None
                                    for r in check.to_target]})
    noise = {k: v for k, v in ref.noise.items() if k != "check"}
    if fit is not None:
        noise = {**noise, "estimate": fit["used"], "low": None, "high": None, "fit": fit}
    return {"noise": noise, "check": check.to_dict(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, help="optimizer steps of the largest batch's branch (default 48; with "
                                                   "--predict-from check, the steps that cover the study check's window)")
    parser.add_argument("--repeats", type=int, default=3, help="branches per batch, with different data orders")
    parser.add_argument("--from-start", action="store_true",
                        help="branch from the initial weights with the run's warmup, not from after the warmup")
    parser.add_argument("--estimate-at", choices=("warmup", "start"), default="warmup",
                        help="observe the gradient noise after the run's warmup (the study's default) or from the "
                             "initial weights")
    parser.add_argument("--predict-from", choices=("estimate", "check"), default="estimate",
                        help="predict from the per-example estimate, or from the noise scale fitted to an independent "
                             "run of the study's own check (branches from the start at 4x the batch; implies "
                             "--from-start)")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/batch_efficiency[-from_start].json)")
    args = parser.parse_args()
    args.from_start = args.from_start or args.predict_from == "check"
    if args.steps is None:
        from autotune.search.branches import STEPS
        from autotune.search.objective import CHECK_FACTOR

        args.steps = STEPS * CHECK_FACTOR // max(FACTORS) if args.predict_from == "check" else 48
    from autotune.search.worker import run_isolated

    results, table = {}, []
    for name in args.models:
        path = str(ROOT / "examples" / f"{name}.py")
        outcome = run_isolated(validate, {"model_path": path, "steps": args.steps, "repeats": args.repeats,
                                          "from_start": args.from_start, "estimate_at": args.estimate_at,
                                          "predict_from": args.predict_from}, 3600)
        if not outcome.ok:
            raise SystemExit(f"{name}: {outcome.reason}")
        got = results[name] = outcome.value
        noise = got["noise"]
        within = [r["predicted_over_measured"] is not None and abs(r["predicted_over_measured"] - 1) <= TOLERANCE
                  for r in got["rows"]]
        row = {"model": name, "noise_scale": noise["estimate"], "low": noise["low"], "high": noise["high"],
               "method": noise["method"], "preconditioned": noise["preconditioned"],
               "batches": got["check"]["batches"], "rows": got["rows"], "passes": bool(within) and all(within)}
        table.append(row)
        print(_line(row), flush=True)
    passed = sum(r["passes"] for r in table)
    print(f"\n{passed} of {len(table)} models within +-{TOLERANCE:.0%} at every larger batch (goal: 4 of 5)")
    print("\n| model | noise scale [95% interval] | batch: predicted / measured (per repeat) | within +-30% |")
    print("| --- | --- | --- | --- |")
    for r in table:
        print(_row(r))
    command = (f"benchmarks/batch_efficiency.py --models {' '.join(args.models)} --steps {args.steps} "
               f"--repeats {args.repeats}" + (" --from-start" if args.from_start else "")
               + (f" --estimate-at {args.estimate_at}" if args.estimate_at != "warmup" else "")
               + (f" --predict-from {args.predict_from}" if args.predict_from != "estimate" else ""))
    suffix = ("-from_start" if args.from_start else "") + (f"-estimate_{args.estimate_at}" if args.estimate_at != "warmup" else "") \
        + ("-predict_check" if args.predict_from == "check" else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"batch_efficiency{suffix}.json"
    write_result(out, command, goal="predicted within +-30% of measured at both larger batches, 4 of 5 models",
                 passed=passed, table=table, results=results)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _line(r: dict[str, Any]) -> str:
    parts = [f"{x['batch']}: {_fmt(x['predicted'])} / {_fmt(x['measured'])}" for x in r["rows"]]
    return f"{r['model']}: noise scale {_fmt(r['noise_scale'], ',.0f')} [{_fmt(r['low'], ',.0f')}, {_fmt(r['high'], ',.0f')}]; " \
           + "; ".join(parts) + ("; passes" if r["passes"] else "; fails")


def _row(r: dict[str, Any]) -> str:
    cells = []
    for x in r["rows"]:
        reps = ", ".join(_fmt(v) for v in x["per_repeat"])
        cells.append(f"{x['batch']}: {_fmt(x['predicted'])} / {_fmt(x['measured'])} ({reps})")
    interval = f"{_fmt(r['noise_scale'], ',.0f')} [{_fmt(r['low'], ',.0f')}, {_fmt(r['high'], ',.0f')}]"
    return f"| {r['model']} | {interval} | {'; '.join(cells)} | {'yes' if r['passes'] else 'no'} |"


if __name__ == "__main__":
    main()
