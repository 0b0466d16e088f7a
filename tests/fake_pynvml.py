"""A fake ``pynvml`` module for tests on machines without an NVIDIA driver.

This is a fake, not NVML: it answers the functions ``autotune.hardware.nvml`` calls,
with the same names, arguments and return shapes as nvidia-ml-py, from a list of GPU
dicts. Install it with ``monkeypatch.setitem(sys.modules, "pynvml", fake)``.

- ``init_error``: an exception class raised by ``nvmlInit`` (e.g. ``NVMLError_LibraryNotFound``);
- ``unsupported``: names of functions that raise ``NVMLError_NotSupported``.
"""

from __future__ import annotations

import types
from typing import Any

# The same codes and strings nvidia-ml-py uses.
_ERRORS = {
    3: ("NVMLError_NotSupported", "Not Supported"),
    9: ("NVMLError_DriverNotLoaded", "Driver Not Loaded"),
    12: ("NVMLError_LibraryNotFound", "NVML Shared Library Not Found"),
    999: ("NVMLError_Unknown", "Unknown Error"),
}

H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "memory_total_bytes": 85_520_809_984,
    "memory_free_bytes": 84_987_740_160,
    "compute_capability": (9, 0),
    "sm_count": 132,
    "max_sm_clock_mhz": 1980,
    "max_memory_clock_mhz": 2619,
    "power_limit_mw": 700_000,
    "pcie_generation": 5,
    "pcie_width": 16,
    "ecc": 1,
    "mig": 0,
    "temperature_c": 31,
    "utilization_gpu_percent": 0,
}

A100 = {
    **H100,
    "name": "NVIDIA A100-SXM4-40GB",
    "uuid": "GPU-66666666-7777-8888-9999-000000000000",
    "memory_total_bytes": 42_949_672_960,
    "memory_free_bytes": 42_000_000_000,
    "compute_capability": (8, 0),
    "sm_count": 108,
    "max_sm_clock_mhz": 1410,
    "max_memory_clock_mhz": 1215,
    "power_limit_mw": 400_000,
    "pcie_generation": 4,
}


class FakeNvml(types.ModuleType):
    """A stand-in for the ``pynvml`` module, driven by a list of GPU dicts."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    NVML_FEATURE_ENABLED = 1
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(
        self,
        gpus: list[dict[str, Any]] | None = None,
        init_error: str | None = None,
        unsupported: tuple[str, ...] = (),
        driver_version: Any = b"550.54.15",
        cuda_version: int = 12040,
    ) -> None:
        super().__init__("pynvml")
        self.gpus = [dict(gpu) for gpu in (gpus if gpus is not None else [H100])]
        self.unsupported = set(unsupported)
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.init_calls = 0
        self.shutdown_calls = 0
        self._make_errors()
        self.init_error = getattr(self, init_error) if init_error else None

    def _make_errors(self) -> None:
        """NVMLError and its subclasses, as nvidia-ml-py builds them."""

        class NVMLError(Exception):
            def __init__(self, value: int) -> None:
                super().__init__(value)
                self.value = value

            def __str__(self) -> str:
                return _ERRORS[self.value][1]

        self.NVMLError = NVMLError
        for code, (name, _) in _ERRORS.items():
            cls = type(name, (NVMLError,), {"__init__": lambda s, c=code: NVMLError.__init__(s, c)})
            setattr(self, name, cls)

    def _gpu(self, function: str, handle: int) -> dict[str, Any]:
        """The GPU behind ``handle``; raises NotSupported for an unsupported function."""
        if function in self.unsupported:
            raise self.NVMLError_NotSupported()
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error()

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> Any:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu("nvmlDeviceGetHandleByIndex", index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._gpu("nvmlDeviceGetName", handle)["name"].encode()  # old bindings: bytes

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle)["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        free = gpu["memory_free_bytes"]
        return types.SimpleNamespace(total=gpu["memory_total_bytes"], free=free)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self._gpu("nvmlDeviceGetCudaComputeCapability", handle)["compute_capability"]

    def nvmlDeviceGetAttributes_v2(self, handle: int) -> Any:
        gpu = self._gpu("nvmlDeviceGetAttributes_v2", handle)
        return types.SimpleNamespace(multiprocessorCount=gpu["sm_count"])

    def nvmlDeviceGetMaxClockInfo(self, handle: int, clock: int) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxClockInfo", handle)
        return gpu["max_sm_clock_mhz" if clock == self.NVML_CLOCK_SM else "max_memory_clock_mhz"]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle)["power_limit_mw"]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkGeneration", handle)["pcie_generation"]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkWidth", handle)["pcie_width"]

    def nvmlDeviceGetEccMode(self, handle: int) -> list[int]:
        ecc = self._gpu("nvmlDeviceGetEccMode", handle)["ecc"]
        return [ecc, ecc]

    def nvmlDeviceGetMigMode(self, handle: int) -> list[int]:
        mig = self._gpu("nvmlDeviceGetMigMode", handle)["mig"]
        return [mig, mig]

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._gpu("nvmlDeviceGetTemperature", handle)["temperature_c"]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return types.SimpleNamespace(gpu=gpu["utilization_gpu_percent"], memory=0)


def fake_api_names() -> list[str]:
    """The pynvml names the fake provides (to check them against the real binding)."""
    return sorted(name for name in dir(FakeNvml) if name.startswith(("nvml", "NVML_")))
