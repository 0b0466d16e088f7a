"""What every benchmark's result file names: the machine and the commit it ran at.

The scripts run as ``benchmarks/NAME.py``, so this directory is on their import path."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """This machine in one line: CPU model, logical cores, memory, and the GPUs torch sees."""
    import torch

    from autotune.hardware import collect_host

    host = collect_host()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = f"{count} x {torch.cuda.get_device_name(0)}" if count else "no GPU"
    return f"{host['cpu_model']}, {host['logical_cores']} logical cores, {host['memory_total_bytes'] / 2**30:.0f} GiB, {gpus}"


def commit() -> str:
    """The short hash of the checkout's HEAD."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def write_result(path: Path, command: str, **payload: object) -> None:
    """Write a result file: the machine, the commit and the command, then ``payload``."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "commit": commit(), "command": command, **payload}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
