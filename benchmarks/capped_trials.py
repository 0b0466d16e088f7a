"""What does --memory-limit cost a trial on the CPU? Capped and uncapped trials, interleaved.

Under --memory-limit a trial process sets an address-space cap and fixes glibc's mmap
threshold (``autotune.engine.memory.cap_memory``), so every large tensor is mapped and
unmapped on its own instead of reusing heap space. This measures the throughput of the
same configs with and without that, in alternating fresh trial processes, with a cap far
above what they need (so the cap itself never binds).

    .venv/bin/python benchmarks/capped_trials.py [--model examples/digits_cnn.py] [--rounds 3]

Prints a table and writes benchmarks/results/capped_trials-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAP = 8 * 2**30
CONFIGS = [
    {"micro_batch_size": 32, "amp": "off"},
    {"micro_batch_size": 256, "amp": "off"},
    {"micro_batch_size": 256, "amp": "bf16"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/digits_cnn.py")
    parser.add_argument("--rounds", type=int, default=3, help="trials per config and side")
    args = parser.parse_args()

    from autotune.config import TrainConfig
    from autotune.hardware import collect_host
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated
    from autotune.model.task import load_task

    task = load_task(ROOT / args.model)
    rows = []
    for knobs in CONFIGS:
        cfg = TrainConfig.from_base(task.base, **knobs).to_dict()
        seen: dict[str, list[float]] = {"uncapped": [], "capped": []}
        for _ in range(args.rounds):
            for side, limit in (("uncapped", None), ("capped", CAP)):
                budget = TrialBudget(memory_limit_bytes=limit).to_dict()
                out = run_isolated(measure, {"model_path": str(task.path), "config": cfg, "budget": budget}, 300)
                if not out.ok:
                    sys.exit(f"{side} trial of {knobs} failed: {out.reason}")
                seen[side].append(out.value["throughput_samples_per_s"])
        med = {side: statistics.median(v) for side, v in seen.items()}
        rows.append({"config": knobs, "samples_per_s": seen, "median": med, "ratio": med["capped"] / med["uncapped"]})

    host = collect_host()
    print(f"{host['cpu_model']}, {host['logical_cores']} logical cores; {args.model}; {args.rounds} rounds, interleaved")
    print(f"{'config':<28}{'uncapped':>11}{'capped':>11}{'capped/uncapped':>17}")
    for r in rows:
        label = f"batch {r['config']['micro_batch_size']}, amp {r['config']['amp']}"
        print(f"{label:<28}{r['median']['uncapped']:>11.0f}{r['median']['capped']:>11.0f}{r['ratio']:>17.3f}")
    out = ROOT / "benchmarks" / "results" / f"capped_trials-{Path(args.model).stem}.json"
    out.write_text(json.dumps({"machine": {k: host[k] for k in ("cpu_model", "logical_cores", "memory_total_bytes")},
                               "command": "benchmarks/capped_trials.py " + " ".join(sys.argv[1:]),
                               "cap_bytes": CAP, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
