"""What NVML says about the NVIDIA GPUs of this machine.

This is the only module of autotune that imports ``pynvml`` (from the ``nvidia-ml-py``
package), and it does so inside ``query_gpus`` so that importing autotune never needs it.

A query never blows up the caller:

- no ``pynvml``, no driver or no library: ``NvmlReport(available=False, message=...)``
  with a one-line message that says what was missing and that only the CPU is profiled;
- one field a device does not support (or any other NVML error on one field): that
  field reads ``"N/A"`` and the rest of the report is filled in as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Union

NA = "N/A"
"""The value of a field that NVML could not read on this device."""

# A reading is the value NVML gave, or NA when it gave none.
Reading = Union[int, float, str, bool]

_CPU_ONLY = "profiling the CPU only"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it; any field may be ``"N/A"``."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: Reading
    memory_free_bytes: Reading
    compute_capability: Reading  # "major.minor", e.g. "9.0"
    sm_count: Reading  # streaming multiprocessors, not CUDA cores
    max_sm_clock_mhz: Reading
    max_memory_clock_mhz: Reading
    power_limit_w: Reading  # the enforced limit
    pcie_generation: Reading  # the highest link generation the GPU and slot support
    pcie_width: Reading  # the highest link width, in lanes
    ecc_enabled: Reading
    mig_enabled: Reading
    temperature_c: Reading
    utilization_gpu_percent: Reading

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for YAML)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NvmlReport:
    """The result of one NVML query: the driver and every GPU, or why there are none."""

    available: bool
    message: str = ""  # empty when NVML answered; otherwise why not, in one line
    driver_version: str = NA  # e.g. "550.54.15"
    cuda_driver_version: str = NA  # the newest CUDA the driver supports, e.g. "12.4"
    gpus: list[GpuInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict (for YAML); GPUs become dicts."""
        data = dataclasses.asdict(self)
        data["gpus"] = [gpu.to_dict() for gpu in self.gpus]
        return data


def query_gpus() -> NvmlReport:
    """Ask NVML about the driver and every GPU; never raises for a missing driver."""
    try:
        import pynvml
    except ImportError as exc:
        return _unavailable(str(exc), f"install nvidia-ml-py to see GPUs; {_CPU_ONLY}")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return _unavailable(str(exc), _init_hint(pynvml, exc))
    try:
        return _query_initialised(pynvml)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _unavailable(reason: str, hint: str) -> NvmlReport:
    """A report for a machine where NVML cannot be used."""
    return NvmlReport(available=False, message=f"NVML not available ({reason}): {hint}")


def _init_hint(pynvml: Any, exc: Exception) -> str:
    """What a failed ``nvmlInit`` most likely means, and what autotune does about it."""
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return f"no NVIDIA driver on this machine; {_CPU_ONLY}"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return f"the NVIDIA driver is installed but not loaded (try nvidia-smi); {_CPU_ONLY}"
    return f"NVML could not start; {_CPU_ONLY}"


def _query_initialised(pynvml: Any) -> NvmlReport:
    """The report, once ``nvmlInit`` has succeeded."""
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        return _unavailable(str(exc), f"NVML could not count the GPUs; {_CPU_ONLY}")
    return NvmlReport(
        available=True,
        driver_version=_read(pynvml, lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
        cuda_driver_version=_read(pynvml, lambda: _cuda_version(pynvml)),
        gpus=[_query_gpu(pynvml, index) for index in range(count)],
    )


def _read(pynvml: Any, query: Callable[[], Any]) -> Any:
    """The value of one query, or ``"N/A"`` when NVML cannot give it.

    AttributeError covers an older binding that lacks the function.
    """
    try:
        return query()
    except (pynvml.NVMLError, AttributeError):
        return NA


def _text(value: Any) -> str:
    """A string from a binding that may return bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _cuda_version(pynvml: Any) -> str:
    """The driver's CUDA version as "major.minor" (NVML encodes 12.4 as 12040)."""
    encoded = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def _query_gpu(pynvml: Any, index: int) -> GpuInfo:
    """Every field of GPU ``index``; a GPU whose handle fails reads "N/A" throughout."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError:
        return GpuInfo(index, *([NA] * (len(dataclasses.fields(GpuInfo)) - 1)))

    def read(query: Callable[[], Any]) -> Any:
        return _read(pynvml, query)

    memory = read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    return GpuInfo(
        index=index,
        name=read(lambda: _text(pynvml.nvmlDeviceGetName(handle))),
        uuid=read(lambda: _text(pynvml.nvmlDeviceGetUUID(handle))),
        memory_total_bytes=NA if isinstance(memory, str) else int(memory.total),
        memory_free_bytes=NA if isinstance(memory, str) else int(memory.free),
        compute_capability=read(lambda: _compute_capability(pynvml, handle)),
        sm_count=read(lambda: _sm_count(pynvml, handle)),
        max_sm_clock_mhz=read(
            lambda: int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
        ),
        max_memory_clock_mhz=read(
            lambda: int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM))
        ),
        power_limit_w=read(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
        pcie_generation=read(lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle))),
        pcie_width=read(lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle))),
        ecc_enabled=read(
            lambda: pynvml.nvmlDeviceGetEccMode(handle)[0] == pynvml.NVML_FEATURE_ENABLED
        ),
        mig_enabled=read(
            lambda: pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        ),
        temperature_c=read(
            lambda: int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        ),
        utilization_gpu_percent=read(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
    )


def _sm_count(pynvml: Any, handle: Any) -> int:
    """Streaming multiprocessors (nvmlDeviceGetNumGpuCores would count CUDA cores)."""
    return int(pynvml.nvmlDeviceGetAttributes_v2(handle).multiprocessorCount)


def _compute_capability(pynvml: Any, handle: Any) -> str:
    """The CUDA compute capability as "major.minor"."""
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return f"{major}.{minor}"
