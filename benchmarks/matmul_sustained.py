"""Does a bf16 matmul keep its speed under sustained load? A short burst against autotune's
own figure against several seconds of back-to-back matmuls, with the SM clock and the
power draw NVML reads during each.

The GPU acceptance check compares autotune's measured bf16 peak (``bench.matmul_tflops``:
a few hundred 8192^3 matmuls back to back, about half a second) with the datasheet. A
burst of ten matmuls after three warm-ups runs before the card reaches its power limit;
training does not. This puts the three side by side in one process, in this order:
burst (cool card), autotune's figure, sustained (``--seconds``, timed in windows of
``--window`` matmuls), burst again (hot card, after one second idle).

    python3 benchmarks/matmul_sustained.py [--out FILE] [--seconds 6]

Needs a CUDA GPU; nvidia-ml-py for the clock and power (without it those are left out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from _common import write_result  # noqa: E402

SIZE = 8192


class Sampler:
    """SM clock (MHz) and power (W) of GPU 0, read by NVML every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.rows, self._stop = every_s, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: the figures go without clocks
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            self.rows.append((time.perf_counter(), n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                              n.nvmlDeviceGetPowerUsage(h) / 1000.0))
            time.sleep(self.every_s)

    def start(self) -> "Sampler":
        if self._nvml is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        """Median SM clock and power over [t0, t1], and how many readings."""
        inside = [(c, p) for t, c, p in self.rows if t0 <= t <= t1]
        if not inside:
            return {"readings": 0}
        return {"readings": len(inside), "sm_clock_mhz": statistics.median(c for c, _ in inside),
                "power_w": statistics.median(p for _, p in inside)}


def tflops(seconds_each: float, size: int = SIZE) -> float:
    return 2.0 * size**3 / seconds_each / 1e12


def burst(mm: Any, warmup: int = 3, timed: int = 10, size: int = SIZE) -> float:
    """Mean TFLOP/s of ``timed`` square ``size`` matmuls ``mm()`` after ``warmup`` (CUDA
    events, one wait): short enough that the card keeps its boost clock."""
    import torch

    for _ in range(warmup):
        mm()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(timed):
        mm()
    end.record()
    end.synchronize()
    return tflops(start.elapsed_time(end) / 1e3 / timed, size)


def sustained(mm: Any, seconds: float, window: int) -> list[float]:
    """TFLOP/s of each window of ``window`` matmuls, back to back for about ``seconds``."""
    import torch

    out: list[float] = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        events = []
        for _ in range(8):  # queue 8 windows, then wait once: the GPU never idles
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(window):
                mm()
            end.record()
            events.append((start, end))
        events[-1][1].synchronize()
        out += [tflops(s.elapsed_time(e) / 1e3 / window) for s, e in events]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="result file (default: benchmarks/results/matmul_sustained-<gpu>-<date>.json)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the sustained phase")
    p.add_argument("--window", type=int, default=50, help="matmuls per timed window of the sustained phase")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("matmul_sustained: needs a CUDA GPU", file=sys.stderr)
        return 2
    from autotune.hardware import bench

    gpu = torch.cuda.get_device_name(0)
    a, b = (torch.randn(SIZE, SIZE, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty_like(a)

    def mm() -> None:
        torch.mm(a, b, out=c)

    sampler = Sampler().start()
    phases: dict[str, Any] = {}

    def phase(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        phases[name] = {"seconds": round(time.perf_counter() - t0, 3), **sampler.between(t0, time.perf_counter())}
        return value

    time.sleep(1.0)  # the card idle, as at the start of a profile
    phases_out = {"burst_cool_tflops": phase("burst_cool", lambda: burst(mm))}
    phases_out["autotune_tflops"] = phase("autotune", lambda: bench.matmul_tflops("cuda", torch.bfloat16, SIZE))
    windows = phase("sustained", lambda: sustained(mm, args.seconds, args.window))
    time.sleep(1.0)
    phases_out["burst_hot_tflops"] = phase("burst_hot", lambda: burst(mm))
    sampler.stop()
    n = len(windows)
    summary = {**phases_out, "sustained_first_window_tflops": windows[0],
               "sustained_median_tflops": statistics.median(windows),
               "sustained_last_quarter_median_tflops": statistics.median(windows[-max(1, n // 4):]),
               "sustained_windows": n}
    for key, value in summary.items():
        print(f"{key:40} {value:,.1f}" if isinstance(value, float) else f"{key:40} {value}")
    for name, row in phases.items():
        print(f"{name:12} {row}")
    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu.lower()).strip("-")
    out = args.out or ROOT / "benchmarks" / "results" / f"matmul_sustained-{slug}-{dt.date.today()}.json"
    write_result(out, " ".join(["python3", "benchmarks/matmul_sustained.py", *(argv or sys.argv[1:])]), gpu=gpu,
                 torch=str(torch.__version__), size=SIZE, summary=summary, phases=phases,
                 windows_tflops=[round(w, 1) for w in windows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
