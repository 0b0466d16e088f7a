"""How the benchmarks time work, and how they give back what they took.

``median_time_s`` times a call on the host's clock (synchronising with the device first
where there is one to wait for); ``cuda_median_time_s`` times work on the GPU with CUDA
events, which count the device's own time between them and none of the host's launch
cost. Both take the median of a few repeats after warm-up, so one slow repeat (another
process waking up, a first-call allocation) does not decide a figure. ``releasing``
runs a clean-up once a block is done with its memory, also when it failed.
"""

from __future__ import annotations

import statistics
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

WARMUP = 2
REPEATS = 5


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device to finish its queued work (CUDA only)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def median_time_s(
    fn: Callable[[], Any],
    sync: Callable[[], None] = lambda: None,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
    max_s: float | None = None,
) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls.

    With ``max_s``, a call so slow that all of them would take longer than that is timed
    fewer times (at least once, after one warm-up call): a kernel without hardware
    support (bf16 matmuls on a CPU without AVX-512 BF16 run about 100x slower than fp32)
    needs no five repeats to show it, and must not hold a profile up for half a minute."""
    start = time.perf_counter()
    for _ in range(min(warmup, 1)):
        fn()
    sync()
    first_s = time.perf_counter() - start
    if max_s is not None and warmup and first_s * (warmup - 1 + repeats) > max_s:
        warmup, repeats = 1, max(1, min(repeats, int(max_s / first_s)))
    for _ in range(warmup - 1):
        fn()
    sync()
    times_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times_s.append(time.perf_counter() - start)
    return statistics.median(times_s)


def cuda_median_time_s(fn: Callable[[], Any], warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median device time of ``fn`` in seconds, timed with CUDA events on the current stream.

    The warm-up calls and the timed repeats are queued back to back and the host waits
    once, at the end, so the GPU never idles between repeats (nor do its clocks drop).
    """
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    events[-1][1].synchronize()
    return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)  # elapsed_time is in ms


@contextmanager
def releasing(release: Callable[[], None]) -> Iterator[None]:
    """Call ``release`` on the way out of the block, exception or not, once nothing the
    block made is held any more.

    A failed call's traceback keeps its frames, and with them every tensor they made;
    those frames are cleared first, so that what they held is free when ``release``
    runs. (The traceback still names every line.)
    """
    try:
        yield
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        release()


def gbps(bytes_moved: float, seconds: float) -> float:
    """Bandwidth in GB/s (10^9 bytes per second)."""
    return bytes_moved / seconds / 1e9
