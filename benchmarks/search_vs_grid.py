"""Does autotune's search find what an exhaustive grid finds, in a fraction of its time?

For each model, in one run on this machine:

1. autotune: ``pipeline.tune`` at its default budget (24 trials with pruning, then the
   re-measured selection), once per objective (goodput, the default, and throughput),
   timed from the start to tuned.yaml: hardware profile, memory probe, model statistics,
   search and selection all count.
2. the grid: every feasible config of the same gated space (the one the goodput study
   searched, with its probed memory limits), each measured once in a fresh process by the
   same trial function and budget as autotune's trials, without pruning; timed.
3. side by side: the default config (batch 32, fp32, no workers), both tuned picks and the
   grid's best by goodput and by throughput, re-measured in turns (A B C D E, B C D E A,
   ...) for ``--rounds`` rounds. The ratios in the table are of the configs' levels with
   each round's machine speed taken out (``race.levels``, as the tuner's own selection
   compares its candidates): on this shared machine the runs of one round tend to be fast
   or slow together, which a ratio of plain medians takes for a difference between configs.
   Each ratio comes with a 90% interval from resampling the rounds, and the ratio of
   plain medians beside it.

Per-trial overhead: over the tuned studies' trials, the wall time from Optuna's ask to
its tell that was not spent in the config's training steps (warm-up steps and timing
windows): process start, model and data building, evaluation, Optuna and SQLite; over
the trials' wall time.

    .venv/bin/python benchmarks/search_vs_grid.py [--models a.py b.py ...] [--rounds 20]

Prints a table and writes benchmarks/results/search_vs_grid-<date>.json.

A grid measures each config once, so its best is itself a noisy argmax (the winner's
curse hits the grid too). ``--recheck RESULT.json`` re-measures, per model, both tuned
picks with the grid's three best configs by goodput and by throughput side by side and
compares the picks with the best of those medians; it writes RESULT-recheck.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import commit, machine

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["examples/digits_cnn.py", "examples/breast_cancer_mlp.py", "examples/sequence_transformer.py"]


def grid_configs(task: Any, space: Any) -> list[Any]:
    """Every feasible config of ``space``'s searched choices, in a fixed order."""
    from autotune.config import TrainConfig

    names = space.searched()
    for n in names:
        if space.params[n].choices is None:
            raise SystemExit(f"the grid needs choices, but `{n}` is a range in {space.source}")
    fixed = {n: p.choices[0] for n, p in space.params.items() if p.fixed}
    train_size = len(task.datasets()[0])
    configs = []
    for values in itertools.product(*(space.params[n].choices for n in names)):
        cfg = TrainConfig.from_base(task.base, **fixed, **dict(zip(names, values)))
        if space.infeasible(cfg, train_size) is None and cfg not in configs:
            configs.append(cfg)
    return configs


def measure_once(task: Any, cfg: Any) -> tuple[dict[str, Any], float]:
    """One trial of ``cfg`` as autotune measures it (fresh process, default budget)."""
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated

    budget = TrialBudget()
    start = time.perf_counter()
    outcome = run_isolated(measure, {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.to_dict()},
                           budget.timeout_s)
    seconds = time.perf_counter() - start
    return (outcome.value if outcome.ok else {"status": outcome.status, "reason": outcome.reason}), seconds


def tune(model: str, objective: str, work: Path, trials: int | None) -> dict[str, Any]:
    from autotune.workflow import pipeline
    from autotune.search import SearchBudget

    budget = SearchBudget() if trials is None else SearchBudget(n_trials=trials)
    opts = pipeline.RunOptions(out=work / f"{Path(model).stem}-{objective}", objective=objective, progress=False, budget=budget)
    start = time.perf_counter()
    t = pipeline.tune(model, opts, log=lambda *_: None)
    seconds = time.perf_counter() - start
    return {"tuning": t, "seconds": seconds, "overhead": overhead(t.study)}


def overhead(study: Any) -> dict[str, float]:
    """Wall time of the study's trials (ask to tell) and the share not spent training the
    config (warm-up steps and timing windows count as training)."""
    wall = timed = 0.0
    for t in study.trials:
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        wall += (t.datetime_complete - t.datetime_start).total_seconds()
        timed += (t.user_attrs.get("timed_seconds") or 0.0) + (t.user_attrs.get("warmup_seconds") or 0.0)
    return {"trials": len(study.trials), "trial_wall_seconds": wall, "training_seconds": timed,
            "overhead_fraction": (wall - timed) / wall if wall else None}


def side_by_side(task: Any, entries: dict[str, Any], scorer: Any, rounds: int) -> dict[str, dict[str, Any]]:
    """Re-measure each distinct config of ``entries`` in turns, each round starting one
    further along (A B C, B C A, ...) so that no config always follows the same one.
    Per config: its measurements by round, their medians and their round-adjusted levels
    (``race.levels``) in throughput and goodput."""
    from autotune.search.race import levels, rotated

    distinct: list[Any] = []
    for cfg in entries.values():
        if cfg not in distinct:
            distinct.append(cfg)
    runs: dict[int, dict[int, dict[str, Any]]] = {i: {} for i in range(len(distinct))}
    for r in range(rounds):
        for i in rotated(list(range(len(distinct))), r):
            measured = measure_once(task, distinct[i])[0]
            if measured.get("throughput_samples_per_s"):
                runs[i][r] = measured
    tables = {key: [{r: _value(key, scorer, cfg, m) for r, m in runs[i].items()} for i, cfg in enumerate(distinct)]
              for key in ("throughput", "goodput")}
    level = {key: levels(table) for key, table in tables.items()}
    out = {}
    for label, cfg in entries.items():
        i = distinct.index(cfg)
        tps = [m["throughput_samples_per_s"] for m in runs[i].values()]
        out[label] = {"config": _short(cfg), "throughputs": tps, "rounds": list(runs[i]),
                      "throughput_samples_per_s": statistics.median(tps) if tps else None,
                      "goodput_samples_per_s": statistics.median(tables["goodput"][i].values()) if tps else None,
                      "throughput_level": level["throughput"][i], "goodput_level": level["goodput"][i],
                      "_tables": {key: t[i] for key, t in tables.items()}, "_distinct": i}
    return out


def _value(key: str, scorer: Any, cfg: Any, measured: dict[str, Any]) -> float:
    return measured["throughput_samples_per_s"] if key == "throughput" else scorer.score(cfg, measured)["goodput_samples_per_s"]


def _public(again: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The side-by-side as the result file keeps it (without the tables ``compare`` uses)."""
    return {label: {k: v for k, v in entry.items() if not k.startswith("_")} for label, entry in again.items()}


def compare(again: dict[str, dict[str, Any]], a: str, b: str, key: str, resamples: int = 1000) -> dict[str, Any]:
    """``a``'s level over ``b``'s in ``key`` (goodput or throughput) from the side-by-side,
    with a 90% interval from resampling its rounds (each draw refits the levels of every
    config measured), and the ratio of plain medians beside it."""
    from autotune.search.race import levels

    x, y = again[a], again[b]
    plain = x[f"{key}_samples_per_s"] / y[f"{key}_samples_per_s"]
    if x["_distinct"] == y["_distinct"]:
        return {"ratio": 1.0, "interval": [1.0, 1.0], "ratio_of_medians": 1.0}
    table = {entry["_distinct"]: entry["_tables"][key] for entry in again.values()}
    rows = [table[i] for i in range(len(table))]  # every distinct config, in side_by_side's order
    ia, ib = x["_distinct"], y["_distinct"]
    rounds = sorted({r for row in rows for r in row})
    rng, draws = random.Random(0), []
    for _ in range(resamples):
        pick = [rng.choice(rounds) for _ in rounds]
        drawn = levels([{j: row[r] for j, r in enumerate(pick) if r in row} for row in rows])
        if drawn[ia] and drawn[ib]:
            draws.append(drawn[ia] / drawn[ib])
    draws.sort()
    interval = [draws[int(0.05 * len(draws))], draws[int(0.95 * len(draws)) - 1]] if draws else None
    return {"ratio": x[f"{key}_level"] / y[f"{key}_level"], "interval": interval, "ratio_of_medians": plain}


def _race(study: Any) -> list[dict[str, Any]]:
    """The tuner's selection race as the study recorded it: per run, its config, trial mean,
    values by round, level and whether it went on after the first round."""
    from autotune.config import TrainConfig

    import autotune.search.optuna_adapter as study_data

    sel = study_data.attrs(study).get("remeasured") or {}
    runs = sel.get("candidates", []) + ([sel["default"]] if sel.get("default", {}).get("trial") is None else [])
    return [{"trial": c.get("trial"), "config": _short(TrainConfig.from_dict(c["config"])), "trial_mean": c.get("trial_mean"),
             "values": c.get("values"), "rounds": c.get("rounds"), "windows": c.get("windows"), "level": c.get("level"),
             "dropped": c.get("dropped")}
            for c in runs if sel]


def _trial_log(study: Any) -> list[dict[str, Any]]:
    """Each trial of the study: number, role, state, value and config (what the search saw)."""
    from autotune.config import TrainConfig

    return [{"n": t.number, "role": t.user_attrs.get("role"), "state": t.state.name, "value": t.value,
             "config": _short(TrainConfig.from_dict(t.user_attrs["config"])) if t.user_attrs.get("config") else None}
            for t in study.trials]


def _short(cfg: Any) -> dict[str, Any]:
    from autotune.config import TrainConfig

    default = TrainConfig()
    keep = ("micro_batch_size", "accumulation_steps", "lr")
    return {k: v for k, v in cfg.to_dict().items() if k in keep or (v != getattr(default, k) and k not in (
        "base_lr", "base_batch_size", "epochs", "weight_decay", "grad_clip", "seed", "warmup"))}


def one_model(model: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from autotune.config import TrainConfig
    from autotune.search.study import scorer_of

    tuned = {obj: tune(model, obj, work, args.trials) for obj in ("goodput", "throughput")}
    g = tuned["goodput"]["tuning"]
    scorer = scorer_of(g.study)
    configs = grid_configs(g.task, g.space)[: args.grid_limit]
    grid, start = [], time.perf_counter()
    for cfg in configs:
        measured, seconds = measure_once(g.task, cfg)
        tps = measured.get("throughput_samples_per_s")
        goodput = scorer.score(cfg, measured)["goodput_samples_per_s"] if tps else None
        grid.append({"config": cfg, "throughput_samples_per_s": tps, "goodput_samples_per_s": goodput,
                     "seconds": seconds, "status": measured.get("status", "ok")})
    grid_seconds = time.perf_counter() - start
    ok = [r for r in grid if r["throughput_samples_per_s"]]
    best = {key: max(ok, key=lambda r: r[f"{key}_samples_per_s"])["config"] for key in ("goodput", "throughput")}
    entries = {"default": TrainConfig.from_base(g.task.base), "tuned_goodput": g.tuned.train,
               "tuned_throughput": tuned["throughput"]["tuning"].tuned.train,
               "grid_best_goodput": best["goodput"], "grid_best_throughput": best["throughput"]}
    again = side_by_side(g.task, entries, scorer, args.rounds)
    compared = {f"{who}_vs_grid_{key}": compare(again, f"{who}_{key}" if who == "tuned" else who, f"grid_best_{key}", key)
                for who in ("tuned", "default") for key in ("goodput", "throughput")}
    ratios = {
        "tuned_vs_grid_goodput": compared["tuned_vs_grid_goodput"]["ratio"],
        "tuned_vs_grid_throughput": compared["tuned_vs_grid_throughput"]["ratio"],
        "tuning_vs_grid_time_goodput": tuned["goodput"]["seconds"] / grid_seconds,
        "tuning_vs_grid_time_throughput": tuned["throughput"]["seconds"] / grid_seconds,
        "overhead_goodput": tuned["goodput"]["overhead"]["overhead_fraction"],
        "overhead_throughput": tuned["throughput"]["overhead"]["overhead_fraction"],
        "default_vs_grid_goodput": compared["default_vs_grid_goodput"]["ratio"],
        "default_vs_grid_throughput": compared["default_vs_grid_throughput"]["ratio"],
    }
    return {
        "model": model,
        "gradient_noise_scale": scorer.b_noise,
        "reference_batch": scorer.reference_batch,
        "searched_knobs": g.space.searched(),
        "gated": g.space.gated,
        "grid_size": len(configs),
        "grid_seconds": grid_seconds,
        "grid_failed": [dict(r, config=_short(r["config"])) for r in grid if not r["throughput_samples_per_s"]],
        "tuning": {obj: {"seconds": v["seconds"], "trials": len(v["tuning"].study.trials),
                         "pruned": sum(t.user_attrs.get("status") == "pruned" for t in v["tuning"].study.trials),
                         "overhead": v["overhead"], "pick": _short(v["tuning"].tuned.train),
                         "race": _race(v["tuning"].study), "trial_log": _trial_log(v["tuning"].study)}
                   for obj, v in tuned.items()},
        "side_by_side": _public(again),
        "ratios": ratios,
        "compared": compared,
        "grid": [dict(r, config=_short(r["config"])) for r in grid],
    }


def recheck(path: Path, rounds: int, top: int = 3) -> None:
    """Re-measure each model's picks with the grid's ``top`` configs per objective."""
    from autotune.config import TrainConfig
    from autotune.search import worker
    from autotune.search.objective import Scorer
    from autotune.model.task import load_task

    data = json.loads(path.read_text())
    tasks = {m["model"]: load_task(m["model"]) for m in data["models"]}
    for task in tasks.values():
        worker.preload_for(task.path)
    out = []
    for m in data["models"]:
        task = tasks[m["model"]]
        scorer = Scorer("goodput", m["reference_batch"], m["gradient_noise_scale"])

        def config(short: dict[str, Any]) -> Any:
            return TrainConfig.from_base(task.base, **{k: v for k, v in short.items() if k != "lr"})

        entries = {f"tuned_{obj}": config(t["pick"]) for obj, t in m["tuning"].items()}
        for key in ("goodput", "throughput"):
            ranked = sorted((r for r in m["grid"] if r[f"{key}_samples_per_s"]), key=lambda r: -r[f"{key}_samples_per_s"])
            entries.update({f"grid_{key}_{i + 1}": config(r["config"]) for i, r in enumerate(ranked[:top])})
        again = side_by_side(task, entries, scorer, rounds)
        ratios = {}
        for key in ("goodput", "throughput"):
            best = max((k for k in again if k.startswith(f"grid_{key}_")), key=lambda k: again[k][f"{key}_level"] or 0.0)
            ratios[f"tuned_vs_grid_top{top}_{key}"] = compare(again, f"tuned_{key}", best, key)
        out.append({"model": m["model"], "side_by_side": _public(again), "ratios": ratios})
        print(Path(m["model"]).stem, {k: round(v["ratio"], 3) for k, v in ratios.items()})
    target = path.with_name(path.stem + "-recheck.json")
    target.write_text(json.dumps({"machine": machine(), "source": path.name, "rounds": rounds, "top": top,
                                  "command": f"benchmarks/search_vs_grid.py --recheck {path} --rounds {rounds}",
                                  "models": out}, indent=2, default=str) + "\n")
    print(f"wrote {target}")


def _print(rows: list[dict[str, Any]]) -> None:
    head = ["model", "grid", "tuned/grid goodput [90%]", "tuned/grid tput [90%]", "tuning/grid time (g, t)",
            "overhead/trial (g, t)", "default/grid (g, t)"]
    print(" | ".join(head))

    def shown(c: dict[str, Any]) -> str:
        low, high = c["interval"] or (float("nan"), float("nan"))
        return f"{c['ratio']:.3f} [{low:.2f}, {high:.2f}] (medians {c['ratio_of_medians']:.3f})"

    for r in rows:
        q, c = r["ratios"], r["compared"]
        print(" | ".join([
            Path(r["model"]).stem, f"{r['grid_size']} in {r['grid_seconds']:.0f} s",
            shown(c["tuned_vs_grid_goodput"]), shown(c["tuned_vs_grid_throughput"]),
            f"{q['tuning_vs_grid_time_goodput']:.3f}, {q['tuning_vs_grid_time_throughput']:.3f}",
            f"{q['overhead_goodput']:.1%}, {q['overhead_throughput']:.1%}",
            f"{q['default_vs_grid_goodput']:.3f}, {q['default_vs_grid_throughput']:.3f}",
        ]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=20, help="side-by-side re-measurement rounds (default 20)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/search_vs_grid-<date>.json)")
    parser.add_argument("--trials", type=int, default=None, help="autotune's budget (default: its own default)")
    parser.add_argument("--grid-limit", type=int, default=None, help="measure only the first N grid configs (to try the script)")
    parser.add_argument("--recheck", type=Path, help="re-measure a result's picks with the grid's top configs (see above)")
    args = parser.parse_args()
    if args.recheck:
        return recheck(args.recheck, args.rounds)
    from autotune.search import worker
    from autotune.model.task import load_task

    for model in args.models:  # one fork server serves every model: preload all their imports
        worker.preload_for(load_task(model).path)
    work = Path(tempfile.mkdtemp(prefix="autotune-grid-"))
    print(f"studies and runs go to {work} (kept, to look into afterwards)")
    at = commit()
    out = args.out or ROOT / "benchmarks" / "results" / f"search_vs_grid-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"benchmarks/search_vs_grid.py --models {' '.join(args.models)} --rounds {args.rounds}"
    command += f" --trials {args.trials}" if args.trials else ""
    command += f" --grid-limit {args.grid_limit}" if args.grid_limit else ""
    rows = []
    for model in args.models:
        rows.append(one_model(model, work, args))
        _print(rows[-1:])
        out.write_text(json.dumps({"machine": machine(), "commit": at, "rounds": args.rounds, "command": command,
                                   "models": rows}, indent=2, default=str) + "\n")  # after each model
    print(f"machine: {machine()}")
    _print(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
