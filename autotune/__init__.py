"""autotune: a hardware-aware autotuner for PyTorch training."""

__version__ = "0.1.0"
