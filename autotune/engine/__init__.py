"""The training engine: knobs, data loading, the loop, memory and throughput measurement."""

from autotune.engine.loop import EvalResult, NonFiniteLossError, TrainResult, evaluate, pick_device, train
from autotune.engine.measure import ThroughputMeter
from autotune.engine.memory import is_oom, peak_memory_bytes

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
