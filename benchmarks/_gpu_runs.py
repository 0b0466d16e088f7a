"""The `autotune run`s of the GPU acceptance check and the checks that read their run
directories: which runs, their command lines and what the time limit leaves them (by
_gpu_plan.py), no trial failed, the single-trial labels no run covered run directly, every
GPU knob choice measured, MFU a fraction. Each run is a real subprocess of `python -m
autotune`; what a run directory says is decided by the plain functions of _gpu_checks.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import _gpu_checks as gc
import _gpu_plan as gp

if TYPE_CHECKING:
    from gpu_acceptance import Context  # what the checks share; the checks read it, and add runs

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 20  # a run still going this long past the time limit is stopped
RESNET, DIGITS, SEQUENCE = (str(ROOT / "examples" / f) for f in ("resnet_images.py", "digits_cnn.py", "sequence_transformer.py"))


@dataclass(frozen=True)
class RunSpec:
    """One `autotune run` the acceptance makes: its model, budget and guessed cost."""

    name: str
    model: str
    trials: int  # the study's budget; with default_budget, what autotune sizes it to on a GPU
    epochs: int | None  # None: the model file's BASE epochs
    cost: gp.RunCost
    space: Callable[[], dict[str, Any]] | None = None  # the search space's YAML data; None: autotune's default
    default_budget: bool = False  # no --trials (unless --budget-scale): autotune sizes the budget itself


def _dry_space() -> dict[str, Any]:
    """Checkpointing on or off and nothing else: three trials (the default, checkpointing,
    the default again), and a completed checkpointing trial for the coverage check."""
    return {"name": "dry-run", "params": {"checkpointing": {"choices": [False, True]}}}


# In order. Digits first, at autotune's default budget (the main user path): on a GPU the
# screening of its 12 searched knobs takes 37 trials, plus 5 (screen.sized_trials); the GPU
# knobs are screened right after the batch knobs, so its compiled trials are the 13th to
# 15th, and the 7th (micro-batch 512: too few steps in 20 epochs of 1,437 images) costs
# nothing. Then the ResNet over the GPU knobs alone
# (every choice of them in 12 trials, the compiled ones 8th, 10th, 11th), then the
# sequence Transformer (8 trials: its compiled ones, 21st on, are not reached; micro-batches
# of 128 and more, and accumulating 4, leave too few steps in 2 epochs: free).
# tests/test_gpu_acceptance.py checks these against what screen.py queues on a GPU.
RUNS = (
    RunSpec("run-digits", DIGITS, 42, None, gp.RunCost(35, 20, free=frozenset({6}), compiles={
        12: "default", 13: "max-autotune-no-cudagraphs", 14: "reduce-overhead"}), default_budget=True),
    RunSpec("run-resnet", RESNET, 14, 1, gp.RunCost(25, 10, trial_s=10, race_s=22 * 7.0, compiles={
        7: "default", 9: "max-autotune-no-cudagraphs", 10: "reduce-overhead"}), space=gc.gpu_knob_space),
    RunSpec("run-sequence", SEQUENCE, 8, 2, gp.RunCost(35, 10, free=frozenset({3, 5, 6, 9}))),
)
DRY_RUNS = (RunSpec("run-digits", DIGITS, 3, 2, gp.RunCost(10, 5, trial_s=4, race_s=20), space=_dry_space),)
# Two workers share the trials: half a plain trial each; the race and final run as any run.
WORKERS = RunSpec("workers", DIGITS, 8, 2, gp.RunCost(35, 10, trial_s=gp.PLAIN_TRIAL_S / 2))


def budget(spec: RunSpec, scale: float) -> int:
    """The run's budget in trials under --budget-scale (at least 3)."""
    return spec.trials if scale == 1 else max(3, round(spec.trials * scale))


def run_args(spec: RunSpec, ctx: Context, out: Path, fit: gp.Fit) -> list[str]:
    """`autotune run`'s options for ``spec``: a fresh study (no warm start) recorded in
    --profiles; --trials the scaled budget, or for a run with its own budget what fits;
    none for a default-budget run at scale 1; the --timeout ``fit`` found; the search space
    written into the work folder."""
    args = ["--out", str(out), "--no-progress", "--profiles", str(ctx.args.profiles), "--no-warm-start"]
    if not spec.default_budget:
        args += ["--trials", str(fit.trials)]
    elif ctx.args.budget_scale != 1:
        args += ["--trials", str(budget(spec, ctx.args.budget_scale))]
    args += ["--timeout", str(max(1, int(fit.timeout_s)))]
    if spec.epochs is not None:
        args += ["--epochs", str(spec.epochs)]
    if spec.space is not None:
        import yaml

        data = spec.space()
        space = ctx.work / f"{data['name']}.yaml"
        space.write_text(yaml.safe_dump(data, sort_keys=False))
        args += ["--space", str(space)]
    return args


def run_command(cmd: list[str], log: Path, timeout_s: float, cwd: Path | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` in a session of its own, output to ``log``; past ``timeout_s`` the whole
    session (its trial processes too) is killed and the return code is None."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.perf_counter() - start


def check_run(spec: RunSpec, ctx: Context, extra: tuple[str, ...] = ()) -> tuple[str, str, dict[str, Any]]:
    """Run `autotune run` for ``spec`` in what the time limit leaves (``gp.fit``) as a
    subprocess and judge its run directory. Its summary is kept in ``ctx.summaries`` for
    the later checks, and in ``ctx.short`` why it was skipped or its search cut short."""
    fit = gp.fit(spec.cost, budget(spec, ctx.args.budget_scale), ctx.budget.remaining())
    if not fit.trials:
        least = spec.cost.whole_s(gp.MIN_TRIALS)
        ctx.short[spec.name] = "skipped (time limit)"
        return "SKIP", (f"time limit: needs at least {least:.0f} s ({fit.whole_s:.0f} s whole), "
                        f"{max(ctx.budget.remaining(), 0):.0f} s left"), {}
    out = ctx.work / spec.name
    shutil.rmtree(out, ignore_errors=True)  # a fresh study: an old one would be resumed
    cmd = [sys.executable, "-m", "autotune", "run", spec.model, *run_args(spec, ctx, out, fit), *extra]
    code, seconds = run_command(cmd, ctx.work / f"{spec.name}.log", ctx.budget.remaining() + GRACE_S, ROOT)
    summary = gc.read_run(out)
    ctx.summaries[spec.name] = summary
    if code is None:
        ctx.short[spec.name] = "stopped at the time limit"
    elif summary.short():
        ctx.short[spec.name] = f"searched {summary.counted()} of {summary.budget_trials} trials (--timeout)"
    status, figure = gc.run_verdict(code, summary)
    log = (ctx.work / f"{spec.name}.log").read_text(errors="replace")
    if code:
        figure += f"; last line: {([line for line in log.splitlines() if line.strip()] or [''])[-1][:200]}"
    detail = {"command": " ".join(cmd), "returncode": code, "seconds": round(seconds, 1), "statuses": summary.statuses(),
              "planned": fit.__dict__, "counted": summary.counted(), "budget_trials": summary.budget_trials,
              "bad_trials": [{k: t.get(k) for k in ("number", "status", "reason", "config")} for t in gc.bad_trials(summary)],
              "speedup_vs_default": summary.speedup_vs_default, "final_mfu": summary.final_mfu,
              "log_tail": log[-3000:] if status != "PASS" else ""}
    return status, figure, detail


def _one_trial(model: str, config: dict[str, Any] | str, budget: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One single trial of ``config`` in a fresh process, judged; ``config`` is the error
    message when the config could not be built."""
    from autotune.search.trial import measure
    from autotune.search.worker import run_isolated

    if isinstance(config, str):  # a knob this autotune does not take: this trial fails, the others run
        return {"status": "FAIL", "figure": "", "outcome": "error", "reason": config, "seconds": 0.0}
    start = time.perf_counter()
    outcome = run_isolated(measure, {"model_path": model, "config": config, "budget": budget}, timeout_s)
    status, figure = gc.trial_verdict(outcome.status, outcome.value)
    keys = ("train_loss", "val_loss", "throughput_samples_per_s", "compile_seconds", "skipped_steps", "steps")
    return {"status": status, "figure": figure, "outcome": outcome.status, "reason": outcome.reason,
            "seconds": round(time.perf_counter() - start, 1), **{k: outcome.value.get(k) for k in keys}}


def _config(base: Any, knobs: dict[str, Any]) -> dict[str, Any] | str:
    """The trial config of ``knobs`` around the model's BASE, or why it cannot be built."""
    from autotune.config import TrainConfig

    try:
        return TrainConfig.from_base(base, **knobs).to_dict()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def check_trials(ctx: Context, labels: dict[str, dict[str, Any]], model: str) -> tuple[str, str, dict[str, Any]]:
    """Each of ``labels`` completed once: by a completed trial of this invocation's runs
    (``gc.coverage``), else, as far as the time left allows (``gp.fit_labels``), as one
    short direct trial of ``model`` (``trial.measure`` in its own process, several at
    once) to a finite training and validation loss."""
    from autotune.search.trial import TrialBudget
    from autotune.model.task import load_task

    covered = gc.coverage(ctx.summaries, labels)
    costs = {label: gp.label_s(labels[label]) for label, where in covered.items() if where is None}
    chosen = gp.fit_labels(costs, ctx.budget.remaining(), ctx.args.parallel_trials)
    base = load_task(model, validate=False).base if chosen else None
    budget = TrialBudget(warmup_steps=3, window_s=0.2, windows=2, max_seconds=30,
                         timeout_s=ctx.args.trial_timeout, max_eval_batches=2).to_dict()
    timeout = min(ctx.args.trial_timeout, max(ctx.budget.remaining(), 1))
    with ThreadPoolExecutor(max(ctx.args.parallel_trials, 1)) as pool:
        futures = {label: pool.submit(_one_trial, model, _config(base, labels[label]), budget, timeout) for label in chosen}
        direct = {label: future.result() for label, future in futures.items()}
    for label, row in direct.items():
        print(f"        {row['status']:<4}  {label:<36} {row['seconds']:6.1f} s  {row['figure']} {row['reason']}".rstrip())
    status, figure = gc.trials_verdict(covered, direct)
    return status, figure, {"covered": covered, "direct": direct, "not_run": [c for c in costs if c not in direct]}


def check_workers(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """`autotune run --workers 2` on two GPUs: a clean run whose trials came from both workers."""
    if ctx.gpu_count < 2:
        return "SKIP", f"{ctx.gpu_count} GPU visible; --workers 2 needs two or more", {}
    status, figure, detail = check_run(WORKERS, ctx, ("--workers", "2"))
    if "workers" not in ctx.summaries:
        return status, figure, detail
    workers = {t.get("worker") for t in ctx.summaries["workers"].trials if t.get("status") in gc.MEASURED_STATUSES}
    if status == "PASS" and len(workers) < 2:
        status = "FAIL"
    return status, f"{len(workers)} worker processes measured trials; {figure}", detail


def check_nproc(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """`autotune train --nproc 2` (torchrun, nccl) of the untuned digits config: two ranks, a finite loss."""
    if ctx.gpu_count < 2:
        return "SKIP", f"{ctx.gpu_count} GPU visible; --nproc 2 needs two or more", {}
    from autotune.config import TrainConfig, TunedConfig
    from autotune.model.task import load_task

    config = TunedConfig(train=TrainConfig.from_base(load_task(DIGITS, validate=False).base)).save(ctx.work / "nproc.yaml")
    out = ctx.work / "nproc"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "autotune", "train", DIGITS, "--config", str(config), "--nproc", "2", "--epochs", "2",
           "--out", str(out), "--no-progress"]
    code, seconds = run_command(cmd, ctx.work / "nproc.log", ctx.budget.remaining() + GRACE_S, ROOT)
    final = json.loads((out / "report.json").read_text())["final"] if (out / "report.json").is_file() else {}
    ok = code == 0 and final.get("processes") == 2 and gc.finite(final.get("val_loss"))
    figure = f"exit {code}, {final.get('processes')} processes, val loss {final.get('val_loss')}, {seconds:.0f} s"
    return ("PASS" if ok else "FAIL"), figure, {"command": " ".join(cmd), "final": final}


def check_knobs(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """Every choice of every GPU knob measured by some trial of this invocation's runs;
    skipped, not failed, where a run that would have measured the rest got no time."""
    if not ctx.summaries:
        return "SKIP", "no autotune run in this invocation", {}
    summaries = list(ctx.summaries.values())
    seen = gc.measured_choices(summaries)
    missing = gc.missing_choices(seen)
    gated = gc.gated_reasons(summaries, missing)
    total = sum(len(c) for c in gc.GPU_KNOBS.values())
    figure = f"{total - len(missing)} of {total} GPU knob choices measured" + (f"; missing {', '.join(missing)}" if missing else "")
    figure += f" ({len(gated)} ruled out by the gate: see detail)" if gated else ""
    detail = {"seen": {k: sorted(map(str, v)) for k, v in seen.items()}, "missing": missing, "gated": gated,
              "short": dict(ctx.short)}
    if ctx.args.cpu_dry_run:
        return "SKIP", f"CPU dry run, GPU knobs gated out: {figure}", detail
    status = gc.knobs_verdict(missing, gated, ctx.short)
    if status == "SKIP":
        figure += "; runs cut short or left out: " + ", ".join(f"{name} {why}" for name, why in ctx.short.items())
    return status, figure, detail


def check_mfu(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """Every MFU figure of this invocation's runs (trials, selection, final run) in (0, 1]."""
    if not ctx.summaries:
        return "SKIP", "no autotune run in this invocation", {}
    values = [(f"{name} {where}", v) for name, s in ctx.summaries.items() for where, v in gc.mfu_values(s)]
    status, figure = gc.mfu_verdict(values)
    return status, figure, {"mfu": dict(values)}
