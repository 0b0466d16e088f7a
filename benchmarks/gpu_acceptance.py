"""GPU acceptance: one command that runs every GPU path of autotune on one card and says
PASS, FAIL or SKIP per check, with its figure and its seconds.

It prints its plan first (each check's guessed seconds and the total), then checks, in
this order: NVML's fields of the card; a burst of bf16 matmuls against the card's
datasheet and the profile's sustained figure against the burst (matmul_sustained.py);
the copy bandwidth against the datasheet; the memory probe (its micro-batch trains, 1.1 times it does
not, each in a fresh process); `autotune run` of the digits CNN at autotune's default
budget (the main user path, first), of a ResNet on generated 3x64x64 images over the GPU
knobs alone and of the sequence Transformer, each with no trial in error, crash or timeout
and tuned/default printed; `--workers 2` and `train --nproc 2` where two GPUs are visible;
fp16 with a GradScaler, bf16, TF32, checkpointing, each torch.compile mode, channels_last,
cuDNN benchmark mode, the fused optimizer and expandable segments, each counted done by a
completed trial of a run or else run directly as one short trial while time is left;
every choice of the GPU knobs measured across the runs; MFU in (0, 1].

Time (_gpu_plan.py, from an H200 run where a step ran there): the cheap checks take
about 65 s; the digits run's default budget (42 trials) about 446 s whole, so under the
default --time-limit of 480 s it gets the rest, its --timeout stopping its search after
35 trials (its compiled ones included), and the ResNet and sequence runs (about 449 and
157 s whole) are skipped, saying so; the single trials then cover what time is left for. A check that no longer fits is skipped, not failed, and a run still going at the
limit is stopped. It writes benchmarks/results/gpu_acceptance-<gpu>-<date>.json and the
card's hardware profile under profiles/. The decisions are plain functions in
_gpu_checks.py and _gpu_plan.py; the runs and the single trials are in _gpu_runs.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # autotune without installing; _gpu_checks

import _gpu_checks as gc  # noqa: E402
import _gpu_plan as gp  # noqa: E402
from _gpu_runs import (DIGITS, DRY_RUNS, RESNET, RUNS, WORKERS, budget, check_knobs, check_mfu,  # noqa: E402
                       check_nproc, check_run, check_trials, check_workers)

DRY_LABELS = ("bf16", "checkpointing")  # the dry run's: its run covers checkpointing, bf16 runs directly
ORDER = ["nvml", "matmul", "bandwidth", "probe", *(r.name for r in RUNS), "workers", "nproc", "trials", "knobs", "mfu"]
CUDA_ONLY = ("matmul", "bandwidth", "probe")


@dataclass
class Context:
    """What the checks share: the options, the clock, the profile and the finished runs."""

    args: argparse.Namespace
    budget: gp.TimeBudget
    work: Path
    gpu_count: int
    profile: Any = None
    summaries: dict[str, gc.RunSummary] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)  # run -> why it was skipped, cut short or left out

    def hardware(self) -> Any:
        """The hardware profile, collected (benchmarks included) once, saved under --profiles."""
        if self.profile is None:
            from autotune.hardware import collect_profile
            from autotune.machines.results import profile_path, save_profile

            self.profile = collect_profile()
            save_profile(profile_path(self.args.profiles, self.profile.fingerprint), self.profile)
        return self.profile


def check_nvml(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """The profile's first GPU: name, memory, SMs, clocks, UUID and the driver, none "N/A"."""
    profile = ctx.hardware()
    if not profile.gpus:
        return "SKIP", f"no GPU in the profile: {profile.nvml.get('message') or 'NVML saw none'}", {}
    gpu = profile.gpus[0]
    missing = gc.nvml_missing(gpu, profile.nvml.get("driver_version"))
    figure = (f"{gpu['name']}, {gpu['memory_total_bytes'] / 2**30:.0f} GiB, {gpu['sm_count']} SMs, "
              f"{gpu['max_sm_clock_mhz']} MHz, driver {profile.nvml.get('driver_version')}"
              if not missing else f"N/A: {', '.join(missing)}")
    return ("FAIL" if missing else "PASS"), figure, {"gpu": gpu, "fingerprint": profile.fingerprint}


def _against_datasheet(ctx: Context, profile_key: str, label: str, measure: Callable[[], float], spec: str,
                       unit: str, what: str) -> tuple[str, str, dict[str, Any]]:
    """The best of the profile's figure (``measure_cuda``) and ``measure()`` against the
    datasheet's ``spec`` field (in the same unit: ``memory_tbps`` counts in GB/s here)."""
    import torch

    name = torch.cuda.get_device_name(0)
    sheet = gc.datasheet_for(name)
    if sheet is None:
        return "SKIP", f"no datasheet for {name!r} in _gpu_checks.DATASHEETS", {}
    figures = {"profile (measure_cuda)": ctx.hardware().measured.get(profile_key) or 0.0, label: measure()}
    torch.cuda.empty_cache()
    target = getattr(sheet, spec) * (1000 if spec == "memory_tbps" else 1)
    status, ratio = gc.ratio_verdict(max(figures.values()), target)
    figure = (f"{max(figures.values()):,.0f} {unit} = {ratio:.2f} of {target:,.0f} ({sheet.card} datasheet, {what}; "
              f"goal {gc.GOAL_RATIO})")
    return status, figure, {"measured": figures, "datasheet": sheet.__dict__}


def check_matmul(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """A burst of dense bf16 matmuls against the datasheet's peak (the card meets its spec),
    and the profile's figure, autotune's sustained measurement, against the burst (it
    measures what the card does under load, not a broken figure): ``gc.matmul_verdict``."""
    import torch
    from matmul_sustained import burst

    name = torch.cuda.get_device_name(0)
    sheet = gc.datasheet_for(name)
    if sheet is None:
        return "SKIP", f"no datasheet for {name!r} in _gpu_checks.DATASHEETS", {}
    size = ctx.args.matmul_size
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(a)
    peak = burst(lambda: torch.mm(a, b, out=out), size=size)
    del a, b, out
    torch.cuda.empty_cache()
    sustained = ctx.hardware().measured.get("cuda_matmul_bf16_tflops") or 0.0
    status, ratio, share = gc.matmul_verdict(peak, sustained, sheet.bf16_dense_tflops)
    low, high = gc.SUSTAINED_RANGE
    figure = (f"burst {peak:,.0f} TFLOP/s = {ratio:.2f} of {sheet.bf16_dense_tflops:,.0f} ({sheet.card} datasheet, "
              f"dense bf16; goal {gc.MATMUL_GOAL}); profile (sustained) {sustained:,.0f} = {share:.2f} of the burst "
              f"(goal {low}-{high})")
    return status, figure, {"burst_tflops": peak, "profile_tflops": sustained, "size": size,
                            "datasheet": sheet.__dict__}


def check_bandwidth(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """Device-to-device copy GB/s (read + write) against the datasheet's memory bandwidth."""
    from autotune.hardware import bench

    return _against_datasheet(ctx, "cuda_memory_copy_gbps", "memory_bandwidth_gbps",
                              lambda: bench.memory_bandwidth_gbps("cuda"), "memory_tbps", "GB/s", "read + write")


def check_probe(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """The memory probe's largest micro-batch of the ResNet example under --probe-limit
    (no headroom) trains again in a fresh process, and 1.1 times it does not."""
    from autotune.config import TrainConfig
    from autotune.engine.memory import format_size, parse_size
    from autotune.search.probe import find_max_batch, isolated_prober
    from autotune.model.task import load_task

    task = load_task(RESNET)
    limit = parse_size(ctx.args.probe_limit)
    probe = isolated_prober(task, TrainConfig.from_base(task.base), limit, headroom=0.0)
    found = find_max_batch(probe, limit, headroom=0.0, low=8, high=8192, granularity=8, rel_tol=0.02)
    if found.max_batch == 0:
        return "FAIL", f"no micro-batch of 8 or more fits in {format_size(limit)}", found.to_dict()
    over = math.ceil(found.max_batch * 1.1 / 8) * 8
    again, beyond = probe(found.max_batch), probe(over)
    status = gc.probe_verdict(again.__dict__, beyond.__dict__)
    past = "ran out of memory" if not beyond.ok else f"used {format_size(beyond.peak_bytes or 0)}"
    figure = (f"largest micro-batch {found.max_batch} in {format_size(limit)} ({len(found.probes)} probes); again: "
              f"{'fits' if again.fits else 'does not fit'}; {over} (1.1x): {past}")
    return status, figure, {"finder": found.to_dict(), "again": again.__dict__, "beyond": beyond.__dict__}


def _labels(ctx: Context) -> tuple[dict[str, dict[str, Any]], str]:
    """The single-trial labels and the model their direct trials run on."""
    if ctx.args.cpu_dry_run:
        return {label: gc.LABELS[label] for label in DRY_LABELS}, DIGITS
    return dict(gc.LABELS), RESNET


def selected(ctx: Context) -> list[str]:
    """The checks this invocation runs, in order (--only, --skip-runs)."""
    runs = [r.name for r in (DRY_RUNS if ctx.args.cpu_dry_run else RUNS)]
    names = [n for n in ORDER if (n in runs or not n.startswith("run-")) and (not ctx.args.only or n in ctx.args.only)]
    return [n for n in names if not (ctx.args.skip_runs and (n.startswith("run-") or n == "workers"))]


def plan(ctx: Context) -> list[tuple[str, float, Callable[[], tuple[str, str, dict[str, Any]]]]]:
    """The checks to run, in order: (name, expected seconds, function). The runs, the
    workers run and the single trials size themselves to the time left (estimate 0)."""
    runs = {r.name: r for r in (DRY_RUNS if ctx.args.cpu_dry_run else RUNS)}
    fns: dict[str, Callable[[], Any]] = {
        "nvml": lambda: check_nvml(ctx), "matmul": lambda: check_matmul(ctx), "bandwidth": lambda: check_bandwidth(ctx),
        "probe": lambda: check_probe(ctx), "workers": lambda: check_workers(ctx), "nproc": lambda: check_nproc(ctx),
        "trials": lambda: check_trials(ctx, *_labels(ctx)), "knobs": lambda: check_knobs(ctx),
        "mfu": lambda: check_mfu(ctx), **{name: (lambda r=r: check_run(r, ctx)) for name, r in runs.items()},
    }
    out = []
    for name in selected(ctx):
        fn, estimate = fns[name], gp.CHECK_S.get(name, 0.0)
        if ctx.args.cpu_dry_run and name in CUDA_ONLY:
            fn, estimate = (lambda: ("SKIP", "CPU dry run: needs CUDA", {})), 0.0
        if name == "nproc" and ctx.gpu_count < 2:
            estimate = 0.0  # it says at once that it needs two GPUs, rather than the clock skipping it
        out.append((name, estimate, fn))
    return out


def _expect(ctx: Context, name: str, left: float) -> tuple[float, str]:
    """What the plan expects of check ``name`` with ``left`` seconds still to go."""
    runs = {r.name: r for r in (DRY_RUNS if ctx.args.cpu_dry_run else RUNS)}
    if name in ("workers", "nproc") and ctx.gpu_count < 2:
        return 0.0, f"skip: {ctx.gpu_count} GPU visible, needs two"
    if ctx.args.cpu_dry_run and name in CUDA_ONLY:
        return 0.0, "skip: CPU dry run"
    if name in runs or name == "workers":
        spec = runs.get(name, WORKERS)
        f = gp.fit(spec.cost, budget(spec, ctx.args.budget_scale), left)
        if not f.trials:
            return 0.0, f"skip: needs at least {spec.cost.whole_s(gp.MIN_TRIALS):.0f} s ({f.whole_s:.0f} s whole)"
        if not f.cut:
            return f.seconds, f"{f.trials} trials"
        return f.seconds, (f"{f.trials} of {budget(spec, ctx.args.budget_scale)} trials ({f.whole_s:.0f} s whole): "
                           f"--timeout {f.timeout_s:.0f} s stops the search")
    if name == "trials":
        labels = _labels(ctx)[0]
        every = gp.pooled_s([gp.label_s(k) for k in labels.values()], ctx.args.parallel_trials)
        note = f"at most: the labels no run covered, while time is left (all {len(labels)}: {every:.0f} s)"
        return min(max(left, 0.0), every), note
    seconds = gp.CHECK_S[name]
    return (seconds, "") if seconds <= left else (0.0, f"skip: needs {seconds:.0f} s")


def plan_rows(ctx: Context) -> list[tuple[str, float, str]]:
    """The plan as printed: each selected check with its expected seconds and a note, each
    given what the ones before it leave of --time-limit."""
    left, rows = ctx.args.time_limit, []
    for name in selected(ctx):
        seconds, note = _expect(ctx, name, left)
        rows.append((name, seconds, note))
        left -= seconds
    return rows


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gpu_acceptance.py", description=__doc__,
        epilog=textwrap.fill(f"checks, in order: {', '.join(ORDER)}. Exit status: 0 when nothing failed, 1 when a "
                             "check failed, 2 when torch sees no CUDA GPU (without --cpu-dry-run). See "
                             "benchmarks/README.md, GPU acceptance.", 88, break_on_hyphens=False),
        formatter_class=_HelpFormatter)
    p.add_argument("--results", type=Path, help="folder for the result file gpu_acceptance-<gpu>-<date>.json "
                   "(default: benchmarks/results; with --cpu-dry-run, WORK/results)")
    p.add_argument("--profiles", type=Path, help="folder for the card's hardware profile (<fingerprint>.yaml); the runs "
                   "record their results there (default: profiles; with --cpu-dry-run, WORK/profiles)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_acceptance",
                   help="folder for the run directories and their logs (emptied per run)")
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds for all checks: a run gets what is left (its search stopped by --timeout), a check "
                        "whose expected time no longer fits is skipped, not failed")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every autotune run's trial budget (and its expected time) by this; the digits "
                        f"run, at autotune's default budget without it, then gets --trials {RUNS[0].trials} x this")
    p.add_argument("--only", type=_names, default=None,
                   help=f"comma-separated checks to run, of: {', '.join(ORDER)}")
    p.add_argument("--skip-runs", action="store_true", help="leave out the autotune runs (run-*, workers)")
    p.add_argument("--probe-limit", default="2GiB", help="GPU memory limit the memory probe finds the micro-batch under")
    p.add_argument("--matmul-size", type=int, default=8192, help="side of the square bf16 matmul timed against the datasheet")
    p.add_argument("--parallel-trials", type=int, default=4,
                   help="direct single trials (for the labels no run covered) run at once, each its own process")
    p.add_argument("--trial-timeout", type=float, default=240.0,
                   help="seconds a single trial may take, a cold compile included, before it is killed")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="hide the GPUs and run the checks' logic on the CPU: one tiny autotune run (it covers "
                        "checkpointing), one direct single trial (bf16); checks that need CUDA are skipped (for "
                        "tests of this script)")
    args = p.parse_args(argv)
    if args.budget_scale <= 0 or args.time_limit <= 0:
        p.error(f"--budget-scale and --time-limit must be > 0, got {args.budget_scale} and {args.time_limit}")
    # Absolute, since the runs start in the checkout: a dry run keeps its files out of it.
    args.work = args.work.resolve()
    args.results = (args.results or (args.work / "results" if args.cpu_dry_run else ROOT / "benchmarks" / "results")).resolve()
    args.profiles = (args.profiles or (args.work / "profiles" if args.cpu_dry_run else ROOT / "profiles")).resolve()
    return args


def _names(text: str) -> list[str]:
    """--only's value: check names, each one of ``ORDER``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check {unknown[0] if unknown else text!r}; checks: {', '.join(ORDER)}")
    return names


def _commit() -> str:
    """The checkout's short HEAD, "unknown" where there is no git or no repository (a copy)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _facts(ctx: Context, gpu: str, torch: Any) -> dict[str, Any]:
    """What the result file says about the card, the software and the invocation."""
    p, sheet = ctx.profile, gc.datasheet_for(gpu)
    return {"gpu": gpu, "gpus_visible": ctx.gpu_count, "date": dt.date.today().isoformat(), "commit": _commit(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "dry_run": ctx.args.cpu_dry_run,
            "torch": str(torch.__version__), "cuda": torch.version.cuda, "datasheet": sheet.__dict__ if sheet else None,
            "profile": str(ctx.args.profiles / f"{p.fingerprint}.yaml") if p else None,
            "host": {k: p.host.get(k) for k in ("cpu_model", "logical_cores", "memory_total_bytes")} if p else None}


def main(argv: list[str] | None = None) -> int:
    """Run the planned checks against the clock, write the result file; the exit status."""
    args = parse_args(argv)
    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts: the dry run never touches a GPU
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(f"gpu_acceptance: no GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA "
              "device, and these checks need one. Run it on a GPU machine, or pass --cpu-dry-run to exercise "
              "its logic on the CPU.", file=sys.stderr)
        return 2
    gpu_count = torch.cuda.device_count()
    gpu = torch.cuda.get_device_name(0) if gpu_count else "CPU dry run"
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, gp.TimeBudget(args.time_limit), args.work, gpu_count)
    print(f"gpu_acceptance: {gpu} ({gpu_count} visible), torch {torch.__version__}, time limit {args.time_limit:.0f} s",
          flush=True)
    rows = plan_rows(ctx)
    print("\n".join(gp.plan_lines(rows, args.time_limit)), flush=True)
    names = selected(ctx)
    if not args.cpu_dry_run:  # for the knobs check: a choice only a left-out run measures is not a fault
        ctx.short.update({r.name: "left out (--only, --skip-runs)" for r in RUNS if r.name not in names})
    checks = [gp.run_check(name, estimate, fn, ctx.budget, log=lambda line: print(line, flush=True))
              for name, estimate, fn in plan(ctx)]
    slug = "cpu-dry-run" if args.cpu_dry_run else gc.slug(gpu)
    facts = {**_facts(ctx, gpu, torch), "plan": [{"name": n, "expected_s": s, "note": t} for n, s, t in rows]}
    path = gc.write_result(gc.result_path(args.results, slug, dt.date.today()), checks, ctx.budget, **facts)
    tally = gc.counts(checks)
    print(f"gpu_acceptance: {tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} skipped in "
          f"{ctx.budget.elapsed():.0f} s; wrote {path}" + (f" and {facts['profile']}" if facts["profile"] else ""))
    return gc.exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
