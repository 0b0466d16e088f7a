"""autotune: a hardware-aware autotuner for PyTorch training.

The Python API (``autotune/api.py``): ``tune``, ``run``, ``train``, ``load_config``,
``profile`` and ``export``; they are imported on first use, so ``import autotune`` stays
light (torch is imported only when one is called).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["tune", "run", "train", "load_config", "profile", "export", "AutotuneError", "ConfigError",
           "ModelFileError", "TrialError"]


def __getattr__(name: str) -> Any:
    if name in ("tune", "run", "train", "load_config", "profile", "export"):
        from autotune import api

        return getattr(api, name)
    if name in ("AutotuneError", "ConfigError", "ModelFileError", "TrialError"):
        from autotune import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
