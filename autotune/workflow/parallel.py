"""Many processes on one study: ``autotune run --workers N`` plans and starts worker
processes (``autotune worker``, in ``workers.py``) and waits for them.

``autotune run --workers N`` starts N workers itself: on a machine with GPUs one per GPU
this process sees (each gets one entry of its ``CUDA_VISIBLE_DEVICES``), so every trial
has a device to itself; on the CPU, each on its
own share of the cores (CPU affinity), with thread counts above the share gated out of the
space. Shared between parallel trials, and so not isolated by this: on a GPU machine the
host CPU, the disk and the PCIe links (a DataLoader-heavy trial can slow its neighbour);
on the CPU, memory bandwidth and the last-level cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from autotune.errors import ConfigError
from autotune.hardware.devices import cuda_gpus, visible_devices

WORKER_LOG = "worker-{i}.log"  # in the run directory


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process: the GPU it may see (an entry of ``CUDA_VISIBLE_DEVICES``: an
    index, a ``GPU-`` UUID or a ``MIG-`` id), or the CPUs it may run on."""

    index: int
    gpu: str | None = None
    cpus: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def describe(self) -> str:
        if self.gpu is None:
            return f"CPUs {_ranges(self.cpus)}"
        return f"GPU {self.gpu}" if self.gpu.isdigit() else self.gpu


def plan_workers(n: int, gpu_count: int | None = None, cpus: list[int] | None = None,
                 env: Mapping[str, str] | None = None) -> list[WorkerPlan]:
    """``n`` workers: one per GPU where there are GPUs, else each with an equal share of
    this process's CPUs (the first ones get one more where they do not divide evenly).

    ``gpu_count`` is how many CUDA devices this process sees (torch's count, which
    follows ``CUDA_VISIBLE_DEVICES``). Worker i sees the i-th of them: the i-th entry of
    this process's ``CUDA_VISIBLE_DEVICES`` (from ``env``, default ``os.environ``) where
    it is set, so workers stay on the GPUs this process was given; index i otherwise.
    """
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpu_count:
        visible = visible_devices((os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES"))
        if visible is None:
            gpus = [str(i) for i in range(gpu_count)]
        elif visible and visible[0].startswith("MIG-"):
            gpus = visible  # CUDA may show one process only one MIG device; each worker uses one
        else:
            gpus = visible[:gpu_count]
        if n > len(gpus):
            seen = "" if visible is None else f", CUDA_VISIBLE_DEVICES={','.join(visible)}"
            raise ConfigError(f"--workers {n} asks for more workers than the GPUs this process sees "
                              f"({len(gpus)}{seen}); each worker runs its trials on a GPU of its own.",
                              hint=f"Use --workers {len(gpus)} or fewer.")
        return [WorkerPlan(i, gpu=gpus[i]) for i in range(n)]
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None and hasattr(os, "sched_getaffinity") else cpus
    cpus = cpus or list(range(os.cpu_count() or 1))
    if n > len(cpus):
        raise ConfigError(f"--workers {n} asks for more workers than this process has CPUs ({len(cpus)}); "
                          "each CPU worker needs at least one core of its own.", hint=f"Use --workers {len(cpus)} or fewer.")
    share, extra = divmod(len(cpus), n)
    plans, start = [], 0
    for i in range(n):
        size = share + (1 if i < extra else 0)
        plans.append(WorkerPlan(i, cpus=cpus[start:start + size]))
        start += size
    return plans


def trial_device(profile: Any, devices: list[dict[str, Any]] | None = None) -> str:
    """What a trial runs on, which every worker of a study must have alike: the GPU
    model (memory, SMs, driver major version), or the CPU model and memory.

    The GPU is the one this process trains on, CUDA device 0, as torch describes it
    (``devices``, default ``hardware.devices.cuda_devices()``): under
    ``CUDA_VISIBLE_DEVICES`` it need not be the profile's first GPU, and a MIG slice
    has its own memory and SMs. Where torch sees no device, the profile's first GPU.
    """
    if profile.device == "cuda":
        found = cuda_gpus(profile.gpus, devices)
        g = found[0] if found else (profile.gpus[0] if profile.gpus else {})
        driver = str(profile.nvml.get("driver_version", "")).split(".")[0]
        return f"GPU {g.get('name')}, {_gib(g.get('memory_total_bytes'))} GiB, {g.get('sm_count')} SMs, driver {driver}"
    host = profile.host
    return f"CPU {host.get('cpu_model')}, {_gib(host.get('memory_total_bytes'))} GiB"


def _gib(value: Any) -> Any:
    """Bytes in whole GiB; a value that is not a number ("N/A") as it is."""
    return round(value / 2**30) if isinstance(value, (int, float)) else value


def _ranges(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def worker_command(model: Path, storage: str, study: str, out: Path, plan: WorkerPlan) -> list[str]:
    cmd = [sys.executable, "-m", "autotune", "worker", str(model), "--storage", storage, "--study", study,
           "--out", str(out), "--no-finalize", "--no-progress"]
    if plan.cpus:
        cmd += ["--cpus", _ranges(plan.cpus)]
    return cmd


def run_workers(study: Any, budget: Any, model: Path, storage: str, out: Path, plans: list[WorkerPlan], progress: bool,
                log: Any = print) -> None:
    """Start one ``autotune worker`` per plan, show the study's trials as they finish, wait
    for all, and say how each worker ended (their output goes to OUT/worker-<i>.log). A
    worker that fails does not stop the others; whatever budget it leaves, the caller
    runs itself."""
    from tqdm.auto import tqdm

    from autotune.search.study import counts

    procs = []
    for plan in plans:
        path = out / WORKER_LOG.format(i=plan.index)
        with open(path, "w") as logfile:
            cmd = worker_command(model, storage, study.study_name, out, plan)
            procs.append((plan, path, subprocess.Popen(cmd, env=plan.env(), stdout=logfile, stderr=subprocess.STDOUT)))
        log(f"autotune: worker {plan.index} on {plan.describe()} (log {path})")
    bar = tqdm(total=budget.n_trials, desc="trials", unit="trial", disable=not progress)
    try:
        while any(proc.poll() is None for _, _, proc in procs):
            bar.n = min(sum(counts(t) for t in study.get_trials(deepcopy=False)), budget.n_trials)
            bar.refresh()
            time.sleep(0.5)
    except BaseException:
        # As a Ctrl-C would: each worker fails its running trial as stale and queues it again.
        for _, _, proc in procs:
            proc.send_signal(signal.SIGINT)
        for _, _, proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        bar.close()
    for plan, path, proc in procs:
        if proc.returncode != 0:
            tail = path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            log(f"autotune: worker {plan.index} ended with exit status {proc.returncode}: {tail[0]}")
