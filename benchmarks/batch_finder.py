"""Our micro-batch finder against Lightning's BatchSizeFinder, on the same model and cap.

For each model, under one CPU memory cap (a real RLIMIT_AS, counted from the process's
virtual size after its imports and data, as ``autotune.engine.memory.cap_memory`` sets it):

1. ours: ``find_max_batch`` over [1, N] with ``rel_tol=0.02``, each probe two AdamW steps
   in a fresh process (``isolated_prober``);
2. the true largest size: the same search with ``rel_tol=0`` (exact to one sample), then
   probed again directly (it fits, one more does not), a window of sizes around it and a
   coarse grid over [1, N]. A bisection is only exact if memory grows monotonically with the
   batch size; the window and the grid check that, and every pair of probes that breaks it
   is printed;
3. Lightning's ``Tuner.scale_batch_size`` in ``binsearch`` and ``power`` mode, each in a
   fresh process under the same cap, on a LightningModule that trains the same model file
   with the same loss and AdamW. Every size a method returns is checked twice, to see
   whether it really trains under the cap: with our prober, and by a 3-step Lightning fit
   in a fresh process (Lightning #8028, #9625: a found size that then runs out of memory).

    .venv/bin/python benchmarks/batch_finder.py [--models digits_cnn ...]

Every capped process, ours and Lightning's, fixes glibc's mmap threshold as ``cap_memory``
does, so memory grows steadily with the batch size on both sides.

Needs the ``bench`` extra (``pip install -e .[bench]``: Lightning). Prints one table per
configuration and writes benchmarks/results/batch_finder-<date>.json with every probe.
About 9 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from batch_finder_lightning import lightning_oom_check, run_lightning

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

# name: (model file, memory cap in bytes, upper bound N of the search). Each cap puts the
# largest size well inside [1, N]. The MLP's activations are small (3-5 KiB a sample), so
# it needs a wide range; 8,192 is Lightning's default upper bound (its `max_val`; some of
# its steps ignore a larger one).
MODELS = {
    "digits_cnn": ("examples/digits_cnn.py", 512 * MiB, 8192),
    "breast_cancer_mlp": ("examples/breast_cancer_mlp.py", 160 * MiB, 65536),
    "breast_cancer_mlp_n8192": ("examples/breast_cancer_mlp.py", 80 * MiB, 8192),
}
REL_TOL = 0.02
LIGHTNING_MODES = ("binsearch", "power")


# ------------------------------------------------------------------ our side


class Recorder:
    """``isolated_prober`` that logs every probe (no caching: repeats show the noise)."""

    def __init__(self, model: str, cap: int) -> None:
        from autotune.config import TrainConfig
        from autotune.search.probe import isolated_prober
        from autotune.model.task import load_task

        self.inner = isolated_prober(load_task(ROOT / model), TrainConfig(amp="off"), cap, headroom=0.0)
        self.log: list[dict[str, Any]] = []

    def __call__(self, batch: int, purpose: str = "") -> Any:
        start = time.perf_counter()
        p = self.inner(batch)
        self.log.append({"batch": batch, "fits": p.fits, "ok": p.ok, "peak_bytes": p.peak_bytes,
                         "wall_s": round(time.perf_counter() - start, 3), "purpose": purpose})
        return p

    def tagged(self, purpose: str) -> Callable[[int], Any]:
        return lambda batch: self(batch, purpose)


def timed_search(rec: Recorder, cap: int, n: int, rel_tol: float, purpose: str) -> dict[str, Any]:
    from autotune.search.probe import find_max_batch

    start = time.perf_counter()
    result = find_max_batch(rec.tagged(purpose), cap, headroom=0.0, low=1, high=n, granularity=1, rel_tol=rel_tol)
    wall = time.perf_counter() - start
    return {"found": result.max_batch, "probes": len(result.probes), "wall_s": wall, "exact": result.exact,
            "sequence": [[p.batch, p.fits] for p in result.probes],
            "slope_bytes_per_sample": result.slope_bytes_per_sample, "intercept_bytes": result.intercept_bytes}


def check_truth(rec: Recorder, true: int, n: int, window: int, grid: int) -> dict[str, Any]:
    """Probe the true size and its successor again, a window around them and a grid."""
    confirm = {"true_fits": rec(true, "confirm").fits, "next_fits": rec(true + 1, "confirm").fits if true < n else None}
    for b in range(max(1, true - window), min(n, true + 1 + window) + 1):
        if b not in (true, true + 1):
            rec(b, "window")
    for k in range(1, grid + 1):
        rec(max(1, round(k * n / grid)), "grid")
    return confirm


def refine_above(rec: Recorder, cap: int, n: int, true: int) -> int | None:
    """The largest fitting size above a grid point that fitted past ``true``, if any: the
    exact search between it and the next grid point that failed. None when none did."""
    from autotune.search.probe import find_max_batch

    grid = [r for r in rec.log if r["purpose"] == "grid"]
    above = [r["batch"] for r in grid if r["fits"] and r["batch"] > true]
    if not above:
        return None
    top = max(above)
    ceiling = min([r["batch"] for r in grid if not r["fits"] and r["batch"] > top], default=n + 1) - 1
    if ceiling <= top:
        return top
    return find_max_batch(rec.tagged("refine above"), cap, headroom=0.0, low=top, high=ceiling, granularity=1).max_batch


def violations(log: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, where a did not fit in some probe and b fitted in another."""
    failed = sorted({r["batch"] for r in log if not r["fits"]})
    fitted = sorted({r["batch"] for r in log if r["fits"]})
    return [(a, b) for a in failed for b in fitted if a < b]


def disagreements(log: list[dict[str, Any]]) -> list[int]:
    """Sizes probed more than once with different answers."""
    seen: dict[int, set[bool]] = {}
    for r in log:
        seen.setdefault(r["batch"], set()).add(r["fits"])
    return sorted(b for b, answers in seen.items() if len(answers) > 1)


# ------------------------------------------------------------------ one model


def bench_model(name: str, window: int, grid: int) -> dict[str, Any]:
    model, cap, n = MODELS[name]
    print(f"\n== {name} ({model}): cap {cap / MiB:.0f} MiB above the process baseline, N = {n}", flush=True)
    rec = Recorder(model, cap)
    ours = timed_search(rec, cap, n, REL_TOL, "ours")
    print(f"ours: {ours['found']} in {ours['probes']} probes, {ours['wall_s']:.1f} s", flush=True)
    fit = run_lightning(model, f"fit:{ours['found']}", cap, n)
    ours["lightning_fit_ok"], ours["lightning_fit_error"] = fit.get("found") is not None, fit.get("error")
    exact = timed_search(rec, cap, n, 0.0, "exact")
    true = exact["found"]
    print(f"exact search: {true} in {exact['probes']} probes", flush=True)
    confirm = check_truth(rec, true, n, window, grid)
    above = refine_above(rec, cap, n, true)
    if above:
        print(f"a grid size above {true} fitted: the largest fitting size above it is {above}", flush=True)
    lightning = {}
    for mode in LIGHTNING_MODES:
        lt = run_lightning(model, mode, cap, n)
        if lt.get("found"):
            lt["verified_fits"] = rec(lt["found"], f"verify lightning {mode}").fits
            fit = run_lightning(model, f"fit:{lt['found']}", cap, n)
            lt["lightning_fit_ok"], lt["lightning_fit_error"] = fit.get("found") is not None, fit.get("error")
        lightning[mode] = lt
        print(f"lightning {mode}: {lt.get('found')} after {lt.get('probes')} sizes, {lt.get('wall_s', 0):.1f} s"
              + (f" (error: {lt['error']})" if lt.get("error") else ""), flush=True)
    return {"model": model, "cap_bytes": cap, "n": n, "probe_bound": math.ceil(math.log2(n)) + 2,
            "ours": ours, "exact": exact, "true": true, "confirm": confirm, "lightning": lightning,
            "largest_fitting_above": above,
            "violations": violations(rec.log), "disagreements": disagreements(rec.log),
            "largest_fitting_seen": max((r["batch"] for r in rec.log if r["fits"]), default=0), "probe_log": rec.log}


def print_table(r: dict[str, Any]) -> None:
    true, bound = r["true"], r["probe_bound"]
    print(f"\n{r['model']}: cap {r['cap_bytes'] / MiB:.0f} MiB, N = {r['n']}, ceil(log2 N)+2 = {bound}")
    head = (f"{'method':<24}{'found':>7}{'true':>7}{'found/true':>11}{'probes':>7}{'bound':>6}{'wall s':>7}"
            f"{'fits: probe':>12}{'Lightning fit':>14}")
    print(head)
    print("-" * len(head))
    rows = [("autotune (rel_tol 0.02)", r["ours"], r["ours"]["found"] > 0), ("exact (rel_tol 0)", r["exact"], r["confirm"]["true_fits"])]
    rows += [(f"lightning {m}", lt, lt.get("verified_fits")) for m, lt in r["lightning"].items()]
    for label, row, fits in rows:
        found = row.get("found")
        ratio = f"{found / true:.3f}" if found and true else "-"
        print(f"{label:<24}{found if found is not None else '-':>7}{true:>7}{ratio:>11}{row.get('probes', '-'):>7}"
              f"{bound:>6}{row.get('wall_s', 0):>7.1f}{_yes(fits):>12}{_yes(row.get('lightning_fit_ok')):>14}")
    print("fits: probe = re-probed with our isolated prober; Lightning fit = a 3-step Lightning fit at that size "
          "in a fresh process under the same cap")
    first = next((x for x in r["probe_log"] if x["batch"] == 1 and x["peak_bytes"]), None)
    if first:
        print(f"a probe of batch 1 peaks at {first['peak_bytes'] / MiB:.1f} MiB above its baseline")
    for mode, lt in r["lightning"].items():
        if lt.get("error"):
            print(f"lightning {mode} stopped with an error after trying {lt.get('tried')}: {lt['error']}")
    ours = r["ours"]
    for mode, lt in r["lightning"].items():
        if lt.get("probes"):
            print(f"ours / lightning {mode}: probes {ours['probes']}/{lt['probes']} = {ours['probes'] / lt['probes']:.2f}, "
                  f"wall {ours['wall_s']:.1f}/{lt['wall_s']:.1f} s = {ours['wall_s'] / lt['wall_s']:.2f} "
                  f"(Lightning's whole process, imports included: {lt['process_wall_s']:.1f} s)")
    print(f"true = {true}: the exact search's answer, re-probed: {true} fits: {r['confirm']['true_fits']}, "
          f"{true + 1} fits: {r['confirm']['next_fits']}. A bisection is exact only if memory is monotonic in the batch size.")
    _print_monotonicity(r)


def _yes(value: bool | None) -> str:
    return "yes" if value else "NO" if value is False else "-"


def _print_monotonicity(r: dict[str, Any]) -> None:
    bad, noisy = r["violations"], r["disagreements"]
    if not bad and not noisy:
        print(f"monotonic over all {len(r['probe_log'])} probes (window and grid included); largest size seen fitting {r['largest_fitting_seen']}")
        return
    if bad:
        examples = ", ".join(f"{a} failed but {b} fitted" for a, b in _spread(bad))
        print(f"NOT monotonic: {len(bad)} pairs of probes break it, e.g. {examples}")
    if noisy:
        print(f"sizes that fitted in one probe and failed in another: {noisy}")
    seen, found = r["largest_fitting_seen"], r["ours"]["found"]
    print(f"largest size seen fitting in any probe: {seen} (true by the exact search: {r['true']}); "
          f"ours found/largest seen = {found / seen:.3f}")


def _spread(pairs: list[tuple[int, int]], k: int = 4) -> list[tuple[int, int]]:
    """Up to k pairs spread over the list: the widest and a few others."""
    widest = max(pairs, key=lambda p: p[1] - p[0])
    picks = [widest] + [pairs[i * len(pairs) // k] for i in range(k - 1)]
    return list(dict.fromkeys(picks))


# ------------------------------------------------------------------ main


def _noop() -> dict[str, Any]:
    return {}


def revision() -> dict[str, Any]:
    """The commit measured, and whether autotune/ had changes on top of it."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "autotune_dirty": bool(git("status", "--porcelain", "autotune"))}


def machine() -> dict[str, Any]:
    from autotune.hardware import collect_host

    host = collect_host()
    keep = ("cpu_model", "logical_cores", "physical_cores", "memory_total_bytes", "load_average_1m")
    return {k: host[k] for k in keep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--window", type=int, default=3, help="sizes probed each side of the true largest")
    parser.add_argument("--grid", type=int, default=12, help="evenly spaced sizes probed over [1, N]")
    args = parser.parse_args()

    import lightning
    import torch

    from autotune.engine.memory import MMAP_THRESHOLD_BYTES
    from autotune.search.worker import run_isolated

    host = machine()
    print(f"machine: {host['cpu_model']}, {host['logical_cores']} logical cores, "
          f"{host['memory_total_bytes'] / 2**30:.0f} GiB, load {host['load_average_1m']}; torch {torch.__version__}, "
          f"lightning {lightning.__version__}")
    print(lightning_oom_check())
    run_isolated(_noop, {}, 120)  # start the fork server, which every later probe shares, untimed
    results = [bench_model(name, args.window, args.grid) for name in args.models]
    for r in results:
        print_table(r)
    out = ROOT / "benchmarks" / "results" / f"batch_finder-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": host, "torch": torch.__version__, "lightning": lightning.__version__,
                               "rel_tol": REL_TOL, "lightning_oom_check": lightning_oom_check(), **revision(),
                               "mmap_threshold_bytes": MMAP_THRESHOLD_BYTES,
                               "command": "benchmarks/batch_finder.py " + " ".join(sys.argv[1:]),
                               "models": results}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
