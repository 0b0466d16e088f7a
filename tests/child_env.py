"""The environment for a test's child Python process."""

from __future__ import annotations

import os
from pathlib import Path


def child_env(*first: str | Path, **extra: str) -> dict[str, str]:
    """This process's environment with ``first`` put at the front of PYTHONPATH, and the
    caller's own PYTHONPATH kept after it (where packages come that way, as on a machine
    without an installer, the child still finds them); ``extra`` sets other variables."""
    path = [str(p) for p in first] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}
