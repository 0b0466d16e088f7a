"""The training engine: knobs, data loading, the loop, memory and throughput measurement."""

from autotune.engine.loop import EvalResult, TrainResult, evaluate, pick_device, train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom, peak_memory_bytes
from autotune.engine.step import NonFiniteLossError

__all__ = [
    "EvalResult",
    "NonFiniteLossError",
    "ThroughputMeter",
    "TrainResult",
    "evaluate",
    "is_oom",
    "peak_memory_bytes",
    "pick_device",
    "train",
]
