"""Functions for tests/test_worker.py to run in processes from the fork server, and the
script that drives them in a fresh interpreter (so that its fork server is its own).

``report`` says what a process forked from the server inherited: the server's
environment (``/proc/<server>/environ``, the server being the child's parent), its own
environment, whether a module that asks ``torch.cuda.is_available()`` at import was
imported in the server, and whether CUDA was initialised there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
PROBE_MODULE = "cuda_at_import"  # written by the test: records what it saw at import
PROBE_SOURCE = f"""import os
import torch

AVAILABLE = torch.cuda.is_available()
{NVML_CHECK.lower()} = os.environ.get("{NVML_CHECK}")
PID = os.getpid()
"""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def report() -> dict[str, Any]:
    import torch

    server = os.getppid()
    probe = sys.modules.get(PROBE_MODULE)
    facts = {
        "server_env": _environ(server).get(NVML_CHECK),
        "child_env": os.environ.get(NVML_CHECK),
        "probe_imported_in_server": probe is not None and probe.PID == server,
        "probe_saw": None if probe is None else getattr(probe, NVML_CHECK.lower()),
        "probe_found_cuda": None if probe is None else probe.AVAILABLE,
        "cuda_initialized": torch.cuda.is_initialized(),
        "in_bad_fork": torch.cuda._is_in_bad_fork(),
    }
    if torch.cuda.is_available():  # and then this process can use it
        facts["cuda_sum"] = float(torch.ones(4, device="cuda").sum())
    return facts


def main(model_path: str) -> None:
    """Load the model file, preload its imports, and report from forked processes: once
    with the variable unset here, once with it set to "0"; then train the model a few
    steps in one (``model_stats.measure``)."""
    from autotune.config import TrainConfig
    from autotune.search import model_stats, worker
    from autotune.model.task import load_task

    task = load_task(model_path)
    added = worker.preload_for(task.path)
    first = worker.run_isolated(report, {}, 120)
    after_first = os.environ.get(NVML_CHECK)
    os.environ[NVML_CHECK] = "0"
    second = worker.run_isolated(report, {}, 120)
    config = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size).to_dict()
    stats = worker.run_isolated(model_stats.measure, {"model_path": str(task.path), "config": config, "observe_steps": 2, "check": False},
                                120).value
    print(json.dumps({"added": added, "first": first.value, "first_status": first.reason or first.status,
                      "env_after_first": after_first, "second": second.value,
                      "env_after_second": os.environ[NVML_CHECK], "flops_per_sample": stats["flops_per_sample"]}))


if __name__ == "__main__":
    main(sys.argv[1])
