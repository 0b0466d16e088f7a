"""Steady-state throughput: warm-up steps excluded, timed windows, median over windows."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ThroughputMeter:
    """Times optimizer steps in windows of at least ``window_s`` seconds.

    The first ``warmup_steps`` steps (allocator growth, cudnn autotuning, lazy init) are
    not timed; at least one always is excluded, since timing starts when a step ends. ``sync`` waits for the device, so a window ends when its work is done, not
    when it was queued. ``done`` turns true once ``windows`` windows are recorded.
    """

    warmup_steps: int = 2
    window_s: float = 0.5
    windows: int = 5
    sync: Callable[[], None] = lambda: None
    # Called with the rates so far after each window, outside the timing (a trial reports
    # to its study there, and may be pruned by an exception raised from it).
    on_window: Callable[[list[float]], None] | None = None
    rates: list[float] = field(default_factory=list)  # samples/s of each window
    steps: int = 0
    timed_s: float = 0.0  # seconds inside recorded windows
    waited_s: float = 0.0  # of which the loop waited for the DataLoader
    warmup_s: float = 0.0  # seconds of the untimed warm-up steps (from the first fetch)
    _began: float | None = None
    _window_wait: float = 0.0
    _window_start: float | None = None
    _window_samples: int = 0

    def step(self, samples: int) -> None:
        """Record one optimizer step that processed ``samples`` samples."""
        self.steps += 1
        if self.done:
            return
        if self.steps <= max(1, self.warmup_steps):
            if self.steps == max(1, self.warmup_steps):
                self._start_window()
                self.warmup_s = self._window_start - (self._began or self._window_start)
            return
        self._window_samples += samples
        elapsed = time.perf_counter() - self._window_start
        if elapsed >= self.window_s:
            self.sync()
            elapsed = time.perf_counter() - self._window_start
            self.rates.append(self._window_samples / elapsed)
            self.timed_s += elapsed
            self.waited_s += self._window_wait
            if self.on_window is not None and not self.done:
                self.on_window(list(self.rates))
            self._start_window()

    def _start_window(self) -> None:
        self.sync()
        self._window_start = time.perf_counter()
        self._window_samples = 0
        self._window_wait = 0.0

    def waited(self, seconds: float) -> None:
        """Time the loop spent waiting for the next batch; counted inside open windows."""
        if self._began is None:
            self._began = time.perf_counter() - seconds
        if self._window_start is not None and not self.done:
            self._window_wait += seconds

    @property
    def done(self) -> bool:
        return len(self.rates) >= self.windows

    def summary(self) -> dict[str, float | int | None]:
        """Median samples/s over windows and the spread (min, max) in the same unit."""
        if not self.rates:
            return {"throughput_samples_per_s": None, "windows": 0}
        return {
            "throughput_samples_per_s": statistics.median(self.rates),
            "window_samples_per_s": list(self.rates),
            "throughput_min_samples_per_s": min(self.rates),
            "throughput_max_samples_per_s": max(self.rates),
            "windows": len(self.rates),
            "timed_seconds": self.timed_s,
            "warmup_seconds": self.warmup_s,
            # Share of the timed step time spent waiting for data: high means the input
            # pipeline (workers, pinning, transforms) limits the speed, not the device.
            "data_wait_fraction": self.waited_s / self.timed_s if self.timed_s > 0 else None,
        }
