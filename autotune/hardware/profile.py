"""The hardware profile: what this machine is, what it measured, which AMP modes it allows.

``collect_profile()`` asks NVML about the GPUs, reads the CPU and memory from the system,
runs the short matmul benchmarks and decides per AMP mode whether the search may use it.
The profile is written as YAML (``profiles/*.yaml``) and read back with ``load_profile``.

torch is imported only inside the functions that collect or measure, so loading and
comparing saved profiles works on a machine without torch.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.config import read_yaml, write_atomic
from autotune.errors import ConfigError
from autotune.hardware.host import _GIB, AMP_DTYPES, _gib, load_average_1m, usable_cores
from autotune.hardware.nvml import NA, GpuInfo, query_gpus

SCHEMA_VERSION = 1
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CPU_FP16_REASON = (
    "fp16 autocast on the CPU is supported but slow (17-66x slower than fp32 where "
    "measured: no fast fp16 matmul kernels); not searched on the CPU"
)


@dataclass(frozen=True)
class HardwareProfile:
    """One machine: host, GPUs, software, measured figures and the AMP decision.

    ``nvml`` is the NVML report without its GPU list; the GPUs are in ``gpus``.
    ``amp`` maps "bf16" and "fp16" to {"supported", "faster", "allowed", "reason"}.
    """

    schema_version: int
    created: str  # ISO 8601 time, UTC
    host: dict[str, Any]
    nvml: dict[str, Any]
    gpus: list[dict[str, Any]]
    software: dict[str, Any]
    device: str  # "cuda" or "cpu": where training runs
    amp: dict[str, dict[str, Any]]
    measured: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""
    # What models tuned to on this machine, one entry per model file name (see
    # autotune/machines/results.py): the best config and the top few, with their throughput.
    tuned: list[dict[str, Any]] = field(default_factory=list)

    def allowed_amp(self) -> dict[str, str | None]:
        """For "fp16" and "bf16": None when the search may use it, else the reason why not."""
        return {
            dtype: None if self.amp[dtype].get("allowed") else str(self.amp[dtype]["reason"])
            for dtype in AMP_DTYPES
        }

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data, in field order (for YAML)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> HardwareProfile:
        """A profile from plain data; unknown keys or another schema version are errors."""
        _check_profile_data(data, source)
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as YAML (atomically) and return the path."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        return write_atomic(path, text)

    def summary(self) -> str:
        """A readable multi-line summary for the terminal."""
        from autotune.hardware.summary import summary_lines

        return "\n".join(summary_lines(self))


def load_profile(path: str | os.PathLike[str]) -> HardwareProfile:
    """Read a profile written by ``HardwareProfile.save``."""
    return HardwareProfile.from_dict(read_yaml(path), source=str(path))


def _check_profile_data(data: Any, source: str) -> None:
    """Raise ConfigError naming ``source`` when ``data`` is not a profile of this schema."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a hardware profile must be a mapping, got {type(data).__name__}."
        )
    known = [f.name for f in dataclasses.fields(HardwareProfile)]
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} in hardware profile; "
            f"allowed keys: {', '.join(known)}."
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: hardware profile schema_version {version!r} is not supported; "
            f"this autotune reads schema_version {SCHEMA_VERSION}. "
            "Collect the profile again with `autotune profile`."
        )
    optional = {"tuned"}  # added after schema 1 was first written; absent means none
    missing = [name for name in known if name not in data and name not in optional]
    if missing:
        keys = ", ".join(repr(name) for name in missing)
        raise ConfigError(
            f"{source}: hardware profile is missing the key{'s' if len(missing) > 1 else ''} {keys}.",
            hint="Collect the profile again with `autotune profile`.",
        )
    _check_profile_parts(data, source)


def _check_profile_parts(data: dict[str, Any], source: str) -> None:
    """Raise ConfigError when a section of the profile has the wrong shape."""
    for key in ("host", "nvml", "software", "amp", "measured"):
        if not isinstance(data[key], dict):
            got = type(data[key]).__name__
            raise ConfigError(f"{source}: {key!r} must be a mapping, got {got}.")
    for dtype in AMP_DTYPES:
        if not isinstance(data["amp"].get(dtype), dict) or "reason" not in data["amp"][dtype]:
            raise ConfigError(f"{source}: amp.{dtype} must be a mapping with a 'reason'.")
    if not isinstance(data["gpus"], list):
        raise ConfigError(f"{source}: 'gpus' must be a list, got {type(data['gpus']).__name__}.")
    gpu_keys = [f.name for f in dataclasses.fields(GpuInfo)]
    for i, gpu in enumerate(data["gpus"]):
        if not isinstance(gpu, dict):
            raise ConfigError(f"{source}: gpus[{i}] must be a mapping, got {type(gpu).__name__}.")
        extra = sorted(set(gpu) - set(gpu_keys), key=str)
        if extra:
            raise ConfigError(f"{source}: gpus[{i}] has unknown key {extra[0]!r}.")


def collect_profile(measure: bool = True) -> HardwareProfile:
    """Profile this machine: NVML, host, software, benchmarks and the AMP decision.

    ``measure=False`` skips the benchmarks (a few hundred milliseconds); bf16 on the CPU
    is then not allowed, for want of a measurement.
    """
    import torch

    report = query_gpus()
    gpus = _fill_sm_counts(report.gpus)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16_cuda = device == "cuda" and _cuda_bf16_supported()
    measured: dict[str, float] = {}
    if measure:
        from autotune.hardware import bench

        measured = bench.measure(device, bf16_supported=bf16_cuda)
    host = collect_host()
    nvml = report.to_dict()
    nvml.pop("gpus")
    gpu_dicts = [gpu.to_dict() for gpu in gpus]
    return HardwareProfile(
        schema_version=SCHEMA_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=host,
        nvml=nvml,
        gpus=gpu_dicts,
        software=_software(device),
        device=device,
        amp=decide_amp(device, bf16_cuda, measured),
        measured=measured,
        fingerprint=fingerprint(host, gpu_dicts, report.driver_version),
    )


def _cuda_bf16_supported() -> bool:
    """Native bf16 on CUDA device 0 (emulated bf16 on older GPUs does not count)."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


def _fill_sm_counts(gpus: list[GpuInfo]) -> list[GpuInfo]:
    """Fill an "N/A" SM count from torch, matching GPUs by UUID (``devices.cuda_devices``).

    NVML's device attributes may be reserved for MIG devices; CUDA always knows the count
    of the GPUs it sees (not of those ``CUDA_VISIBLE_DEVICES`` hides).
    """
    from autotune.hardware.devices import bare_uuid, cuda_devices

    if not any(gpu.sm_count == NA for gpu in gpus):
        return gpus
    counts = {device["uuid"]: device["sm_count"] for device in cuda_devices() if device["uuid"]}
    return [
        dataclasses.replace(gpu, sm_count=counts.get(bare_uuid(gpu.uuid), NA)) if gpu.sm_count == NA else gpu
        for gpu in gpus
    ]


def _cpuinfo() -> list[dict[str, str]]:
    """The processor blocks of /proc/cpuinfo as dicts; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for block in text.split("\n\n"):
        pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
        entry = {key.strip(): value.strip() for key, value in pairs}
        if entry:
            blocks.append(entry)
    return blocks


def _memory_total_bytes() -> int:
    """Physical memory from /proc/meminfo, else from sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def collect_host() -> dict[str, Any]:
    """The CPU model, core counts, memory, load and the CPU flags that matter for AMP.

    ``logical_cores`` counts the CPUs this process may run on (``usable_cores``), so a
    pinned run profiles, and fingerprints, as the smaller machine it trains on;
    ``physical_cores`` and ``machine_logical_cores`` describe the whole machine.
    """
    blocks = _cpuinfo()
    machine_logical = os.cpu_count() or max(len(blocks), 1)
    cores = {(b.get("physical id"), b["core id"]) for b in blocks if "core id" in b}
    model = next((b["model name"] for b in blocks if b.get("model name")), "")
    flags = set(next((b["flags"].split() for b in blocks if "flags" in b), []))
    load = load_average_1m()
    return {
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "logical_cores": usable_cores(),
        "physical_cores": len(cores) or machine_logical,
        "machine_logical_cores": machine_logical,
        "memory_total_bytes": _memory_total_bytes(),
        "load_average_1m": NA if load is None else load,
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
    }


def _amp_entry(supported: bool, faster: bool | None, allowed: bool, reason: str) -> dict:
    """One AMP mode's verdict, as stored in the profile."""
    return {"supported": supported, "faster": faster, "allowed": allowed, "reason": reason}


def _cuda_amp_entry(name: str, supported: bool, measured: dict[str, float]) -> dict:
    """fp16 or bf16 on CUDA: allowed when supported and not measured slower than fp32."""
    if not supported:
        return _amp_entry(False, None, False, f"{name} is not supported natively by this GPU")
    speedup = measured.get(f"cuda_{name}_speedup")
    if speedup is None:
        return _amp_entry(True, None, True, f"{name} is supported by this GPU (not measured)")
    faster = speedup > 1.0
    reason = f"measured {name} matmul at {speedup:.2f}x the speed of fp32"
    return _amp_entry(True, faster, faster, reason + ("" if faster else "; not faster"))


def decide_amp(device: str, cuda_bf16: bool, measured: dict[str, float]) -> dict[str, dict]:
    """Per AMP mode: supported, faster (None when not measured), allowed and the reason."""
    if device == "cuda":
        return {
            "bf16": _cuda_amp_entry("bf16", cuda_bf16, measured),
            "fp16": _cuda_amp_entry("fp16", True, measured),
        }
    speedup = measured.get("cpu_bf16_speedup")
    if speedup is None:
        bf16 = _amp_entry(True, None, False, "not measured")
    else:
        faster = speedup > 1.0
        reason = (
            f"measured bf16 autocast matmul at {speedup:.2f}x the speed of fp32 on this CPU; "
            f"{'faster' if faster else 'not faster'}, so {'allowed' if faster else 'not allowed'}"
        )
        bf16 = _amp_entry(True, faster, faster, reason)
    return {"bf16": bf16, "fp16": _amp_entry(True, False, False, CPU_FP16_REASON)}


def _software(device: str) -> dict[str, Any]:
    """Versions of Python, torch, the CUDA torch was built with and cuDNN; torch's threads;
    and whether torch reports bf16 and fp16 as supported on ``device``."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that safe_dump refuses
        "cuda": None if torch.version.cuda is None else str(torch.version.cuda),
        "cudnn": None if cudnn is None else int(cudnn),
        "torch_num_threads": torch.get_num_threads(),
        **_torch_dtype_support(device),
    }


def _torch_dtype_support(device: str) -> dict[str, Any]:
    """bf16 and fp16 support as torch reports it, and where the answer came from.

    CUDA: ``torch.cuda.is_bf16_supported()`` (which counts emulated bf16; the AMP verdict
    counts native only); fp16 runs on every GPU torch supports. CPU: autocast runs either
    dtype anywhere, so what torch reports is whether oneDNN has kernels for it on this CPU
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` / ``_fp16_``, private but what torch's
    own tests ask); "N/A" where this torch cannot say.
    """
    import torch

    if device == "cuda":
        return {
            "torch_bf16_supported": bool(torch.cuda.is_bf16_supported()),
            "torch_fp16_supported": True,
            "torch_dtype_support_source": "torch.cuda.is_bf16_supported()",
        }
    support = {}
    for dtype in ("bf16", "fp16"):
        try:
            check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{dtype}_supported")
            support[f"torch_{dtype}_supported"] = bool(check())
        except (AttributeError, RuntimeError):
            support[f"torch_{dtype}_supported"] = NA
    return {**support, "torch_dtype_support_source": "oneDNN CPU kernels, torch.ops.mkldnn"}


def _slug(text: str) -> str:
    """Lower-case words joined by dashes: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def fingerprint(host: dict[str, Any], gpus: list[dict[str, Any]], driver_version: str) -> str:
    """A name for the hardware class: a readable slug and a short hash.

    Only stable facts go in (CPU model, logical cores, memory in GiB, the CPU's vector
    extensions of ``CPU_FLAGS``; per GPU its name, memory in GiB, SM count and the
    driver's major version), never load, free memory, temperature or time, so two
    profiles of one machine get the same fingerprint. The extensions matter because a
    virtual machine may show only a family name ("AMD EPYC"): two hosts of that name, one
    with AVX-512 BF16 and one with AVX2 only, train at different speeds and pick
    different dtypes, and must not share results as one machine.
    """
    driver_major = str(driver_version).split(".")[0]
    gpu_keys = [
        [g["name"], _gib(g["memory_total_bytes"]), g["sm_count"], driver_major] for g in gpus
    ]
    cpu_key: list[Any] = [host["cpu_model"], host["logical_cores"], _gib(host["memory_total_bytes"])]
    if host.get("cpu_flags"):
        cpu_key.append(sorted(host["cpu_flags"]))
    digest = hashlib.sha256(json.dumps([cpu_key, gpu_keys]).encode()).hexdigest()[:8]
    if gpus:
        names = list(dict.fromkeys(_slug(str(g["name"])) for g in gpus))
        return f"gpu-{'-'.join(names)}-x{len(gpus)}-{digest}"
    cpu = _slug(str(host["cpu_model"]))
    return f"cpu-{cpu}-{host['logical_cores']}c-{cpu_key[2]}gib-{digest}"
