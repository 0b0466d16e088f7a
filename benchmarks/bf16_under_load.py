"""Does the profile's bf16 decision survive a busy machine?

The profile allows bf16 on the CPU only when a bf16-autocast matmul measured faster than
fp32 (``hardware.bench.cpu_bf16_speedup``). Here that ratio is measured on a quiet
machine, then while two processes load the cores in random bursts (0.05-0.4 s busy, then
as long idle), once with one timing per side (``rounds=1``, as before) and once with the
fastest of ``--rounds`` alternating rounds (default 5, as the profile does). Prints min / median / max and how
often the ratio fell below 1 (which would rule bf16 out).

    .venv/bin/python benchmarks/bf16_under_load.py [--repeats 12] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time


def _spin(stop) -> None:
    r = random.Random()
    while not stop.is_set():
        end = time.time() + r.uniform(0.05, 0.4)
        while time.time() < end:
            pass
        time.sleep(r.uniform(0.05, 0.4))


def _line(label: str, xs: list[float]) -> str:
    return (f"{label}: min {min(xs):.2f}, median {statistics.median(xs):.2f}, max {max(xs):.2f}; "
            f"below 1 in {sum(x < 1 for x in xs)} of {len(xs)}")


def main() -> None:
    from autotune.hardware.bench import cpu_bf16_speedup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    quiet = [cpu_bf16_speedup(rounds=1) for _ in range(5)]
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        one = [cpu_bf16_speedup(rounds=1) for _ in range(args.repeats)]
        many = [cpu_bf16_speedup(rounds=args.rounds) for _ in range(args.repeats)]
    finally:
        stop.set()
        for p in procs:
            p.join()
    print(_line("quiet, one timing each", quiet))
    print(_line("bursty load, one timing each", one))
    print(_line(f"bursty load, fastest of {args.rounds} alternating rounds", many))


if __name__ == "__main__":
    main()
