"""Does the final run train as fast as the search said it would?

For each model, ``autotune run MODEL`` at its default budget (the command a user types,
in a fresh process), then the final run's accounting from its tuned.yaml: the training
steps' achieved samples/s over the selection's measured samples/s for the config it
picked. Each model is run ``--repeats`` times (default 3), the models taking turns; the
table gives the median ratio and its range, the end-to-end samples/s, and where the rest
of each final run's time went.

A ratio near 1 means the search measured what the user gets. The goal is 0.85-1.15 for
every model. Run it alone: other work on the same cores moves the ratio.

    python benchmarks/predicted_vs_achieved.py                      # every model, 3 runs each
    python benchmarks/predicted_vs_achieved.py --models digits_cnn --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import ROOT, write_result

MODELS = {
    "digits_cnn": ROOT / "examples" / "digits_cnn.py",
    "breast_cancer_mlp": ROOT / "examples" / "breast_cancer_mlp.py",
    "sequence_transformer": ROOT / "examples" / "sequence_transformer.py",
    "hf_text_classifier": ROOT / "examples" / "hf_text_classifier.py",
    "image_folder": ROOT / "examples" / "image_folder.py",
}
LOW, HIGH = 0.85, 1.15


def run_once(model: Path, work: Path, extra: list[str]) -> dict:
    """One ``autotune run`` in a fresh process; its final run's record from tuned.yaml."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "autotune", "run", str(model), "--out", str(out), "--no-progress",
           "--profiles", str(work / "profiles"), "--no-warm-start", *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    final = tuned["measured"]["final_run"]
    return {"wall_s": wall, "config": tuned["train"], "ratio": final["achieved_over_selected"],
            "selected_samples_per_s": final["selected_samples_per_s"],
            "achieved_samples_per_s": final["achieved_samples_per_s"],
            "end_to_end_samples_per_s": final["end_to_end_samples_per_s"], "seconds": final["seconds"],
            "gap": final["gap"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predicted_vs_achieved.json")
    parser.add_argument("extra", nargs="*", help="more `autotune run` arguments, after --")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in args.models}
    with tempfile.TemporaryDirectory(prefix="autotune-pva-") as tmp:
        os.environ.setdefault("AUTOTUNE_EXAMPLE_CACHE", str(Path(tmp) / "cache"))
        for repeat in range(args.repeats):
            for name in args.models:  # the models take turns, so a slow spell hits them all
                one = run_once(MODELS[name], Path(tmp) / name, args.extra)
                runs[name].append(one)
                print(f"{name} run {repeat + 1}: final/selected {one['ratio']:.3f} "
                      f"({one['achieved_samples_per_s']:,.0f} / {one['selected_samples_per_s']:,.0f} samples/s), "
                      f"{one['wall_s']:.0f} s", flush=True)
    table = []
    for name, rows in runs.items():
        ratios = [r["ratio"] for r in rows]
        table.append({"model": name, "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
                      "max_ratio": max(ratios), "within_goal": LOW <= statistics.median(ratios) <= HIGH,
                      "median_end_to_end_samples_per_s": statistics.median(r["end_to_end_samples_per_s"] for r in rows)})
    print(f"\n| model | final / selected (median of {args.repeats}) | range | end to end samples/s | in {LOW}-{HIGH} |")
    print("| --- | --- | --- | --- | --- |")
    for row in table:
        print(f"| {row['model']} | {row['median_ratio']:.3f} | {row['min_ratio']:.3f}-{row['max_ratio']:.3f} | "
              f"{row['median_end_to_end_samples_per_s']:,.0f} | {'yes' if row['within_goal'] else 'no'} |")
    command = "python benchmarks/predicted_vs_achieved.py " + " ".join(sys.argv[1:])
    write_result(args.out, command.strip(), goal=[LOW, HIGH], table=table, runs=runs)


if __name__ == "__main__":
    main()
