"""Why capped processes fix glibc's mmap threshold at 128 KiB: peak memory against the batch.

A probe (``autotune.search.probe.probe_batch``, two AdamW steps in a fresh process) of the
digits CNN at batch sizes around where its memory reaches a few hundred MiB, under four
malloc settings: the threshold fixed at 128 KiB (what ``cap_memory`` sets), at 32 MiB (the
largest glibc's dynamic threshold reaches), at 1 GiB (everything on the heap), and glibc's
dynamic default. The cap is far above the peaks, so nothing fails: the table shows the peak
address space above the baseline, which is what a real cap (RLIMIT_AS) counts.

    .venv/bin/python benchmarks/malloc_modes.py

Prints the table and writes benchmarks/results/malloc_modes-digits_cnn.json. About 1 minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "examples/digits_cnn.py"
SIZES = [2000, 2400, 2668, 2700, 3000, 3500, 4000, 4096, 4500, 5000]
MODES = {"fixed 128 KiB": 128 * 1024, "fixed 32 MiB": 32 * 2**20, "fixed 1 GiB": 2**30, "glibc dynamic": None}


def peak(batch: int, threshold: int | None) -> dict[str, Any]:
    """In a fresh process: a probe of ``batch`` with glibc's mmap threshold at ``threshold``
    bytes (None: left dynamic) instead of the 128 KiB ``cap_memory`` sets."""
    from autotune.config import TrainConfig
    from autotune.engine import memory
    from autotune.search.probe import probe_batch

    fixed = memory.fix_mmap_threshold
    memory.fix_mmap_threshold = (lambda: False) if threshold is None else (lambda: fixed(threshold))
    return probe_batch(str(ROOT / MODEL), TrainConfig(amp="off").to_dict(), batch, 2**31, 0.0)


def main() -> None:
    from autotune.hardware import collect_host
    from autotune.search.worker import run_isolated

    rows: dict[str, list[float | str]] = {}
    for name, threshold in MODES.items():
        rows[name] = []
        for b in SIZES:
            out = run_isolated(peak, {"batch": b, "threshold": threshold}, 120)
            rows[name].append(round(out.value["peak_bytes"] / 2**20, 1) if out.ok else out.status)
    host = collect_host()
    print(f"{host['cpu_model']}, {host['logical_cores']} logical cores; {MODEL}: peak MiB above the baseline")
    print(f"{'batch':<16}" + "".join(f"{b:>7}" for b in SIZES))
    for name, values in rows.items():
        print(f"{name:<16}" + "".join(f"{v:>7}" for v in values))
    out = ROOT / "benchmarks" / "results" / "malloc_modes-digits_cnn.json"
    out.write_text(json.dumps({"machine": {k: host[k] for k in ("cpu_model", "logical_cores", "memory_total_bytes")},
                               "command": "benchmarks/malloc_modes.py", "sizes": SIZES,
                               "peak_mib": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
