"""Tests of autotune.hardware: NVML (through a fake at the boundary), the host, profiles.

The microbenchmarks are in test_bench.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.errors import ConfigError
from autotune.hardware import (
    NA,
    HardwareProfile,
    collect_host,
    collect_profile,
    decide_amp,
    fingerprint,
    load_profile,
    query_gpus,
)

try:
    from tests.fake_pynvml import A100, H100, FakeNvml, fake_api_names
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fake_pynvml import A100, H100, FakeNvml, fake_api_names

ROOT = Path(__file__).resolve().parents[1]
# The same machine's profile as first committed, before the bandwidth keys existed.
OLDER_PROFILE = ROOT / "tests" / "fixtures" / "fixture_cpu_profile_before_bandwidth.yaml"
NO_DRIVER = (
    "NVML not available (NVML Shared Library Not Found): "
    "no NVIDIA driver on this machine; profiling the CPU only"
)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    """Install a fake pynvml with the given GPUs; returns the fake."""

    def install(*args, **kwargs) -> FakeNvml:
        fake = FakeNvml(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def test_fake_names_exist_in_the_real_binding() -> None:
    import pynvml

    errors = ["NVMLError", "NVMLError_NotSupported", "NVMLError_LibraryNotFound",
              "NVMLError_DriverNotLoaded", "NVMLError_Unknown"]
    missing = [name for name in fake_api_names() + errors if not hasattr(pynvml, name)]
    assert missing == []
    not_found = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert str(not_found) == "NVML Shared Library Not Found"


def test_query_parses_two_gpus(fake_nvml) -> None:
    fake = fake_nvml([H100, A100])
    report = query_gpus()
    assert report.available and report.message == ""
    assert report.driver_version == "550.54.15"  # decoded from bytes
    assert report.cuda_driver_version == "12.4"
    assert [gpu.index for gpu in report.gpus] == [0, 1]
    h100, a100 = report.gpus
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert h100.uuid == H100["uuid"]
    assert h100.memory_total_bytes == 85_520_809_984
    assert h100.memory_free_bytes == 84_987_740_160
    assert h100.compute_capability == "9.0"
    assert h100.sm_count == 132
    assert (h100.max_sm_clock_mhz, h100.max_memory_clock_mhz) == (1980, 2619)
    assert h100.power_limit_w == 700.0
    assert (h100.pcie_generation, h100.pcie_width) == (5, 16)
    assert h100.ecc_enabled is True and h100.mig_enabled is False
    assert (h100.temperature_c, h100.utilization_gpu_percent) == (31, 0)
    assert a100.name == "NVIDIA A100-SXM4-40GB"
    assert (a100.compute_capability, a100.sm_count) == ("8.0", 108)
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_unsupported_field_reads_na(fake_nvml) -> None:
    fake_nvml([H100], unsupported=("nvmlDeviceGetAttributes_v2", "nvmlDeviceGetEccMode",
                                   "nvmlDeviceGetMemoryInfo"))
    gpu = query_gpus().gpus[0]
    assert (gpu.sm_count, gpu.ecc_enabled) == (NA, NA)
    assert (gpu.memory_total_bytes, gpu.memory_free_bytes) == (NA, NA)
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.max_sm_clock_mhz == 1980


def test_a_gpu_without_a_handle_reads_na_throughout(fake_nvml) -> None:
    fake_nvml([H100], unsupported=("nvmlDeviceGetHandleByIndex",))
    gpu = query_gpus().gpus[0]
    assert gpu.index == 0
    assert {value for name, value in gpu.to_dict().items() if name != "index"} == {NA}


def test_any_nvml_error_on_a_system_field_reads_na(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml([H100])

    def broken() -> int:
        raise fake.NVMLError_Unknown()

    monkeypatch.setattr(fake, "nvmlSystemGetCudaDriverVersion_v2", broken)
    report = query_gpus()
    assert report.available and report.cuda_driver_version == NA


def test_library_not_found_is_unavailable_not_an_exception(fake_nvml) -> None:
    fake = fake_nvml(init_error="NVMLError_LibraryNotFound")
    report = query_gpus()
    assert report.available is False
    assert report.message == NO_DRIVER
    assert report.gpus == [] and report.driver_version == NA
    assert fake.shutdown_calls == 0  # nothing to shut down when init failed


def test_driver_not_loaded_message(fake_nvml) -> None:
    fake_nvml(init_error="NVMLError_DriverNotLoaded")
    report = query_gpus()
    assert report.available is False
    assert report.message == (
        "NVML not available (Driver Not Loaded): the NVIDIA driver is installed but not "
        "loaded (try nvidia-smi); profiling the CPU only"
    )


def test_missing_pynvml_module(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    report = query_gpus()
    assert report.available is False
    assert report.message.startswith("NVML not available (")
    assert report.message.endswith("install nvidia-ml-py to see GPUs; profiling the CPU only")


def test_real_nvml_on_this_machine_does_not_raise() -> None:
    report = query_gpus()
    if shutil.which("nvidia-smi") is None:
        assert report.available is False
        assert report.message == NO_DRIVER
    else:
        assert report.available and report.gpus


def test_fingerprint_is_stable_on_this_machine() -> None:
    first = collect_profile(measure=False)
    second = collect_profile(measure=False)
    assert first.fingerprint == second.fingerprint
    if not first.gpus:
        assert re.fullmatch(r"cpu-[a-z0-9-]+-\d+c-\d+gib-[0-9a-f]{8}", first.fingerprint)


def test_fingerprint_follows_gpu_name_and_memory_only(fake_nvml) -> None:
    fake_nvml([H100])
    h100 = collect_profile(measure=False).fingerprint
    assert re.fullmatch(r"gpu-nvidia-h100-80gb-hbm3-x1-[0-9a-f]{8}", h100)
    fake_nvml([{**H100, "temperature_c": 80, "memory_free_bytes": 1, "power_limit_mw": 1}])
    assert collect_profile(measure=False).fingerprint == h100  # volatile readings stay out
    fake_nvml([{**H100, "memory_total_bytes": 100 * 1024**3}])
    assert collect_profile(measure=False).fingerprint != h100
    fake_nvml([{**H100, "name": "NVIDIA H100 PCIe"}])
    assert collect_profile(measure=False).fingerprint != h100
    fake_nvml([A100, A100])
    assert collect_profile(measure=False).fingerprint.startswith("gpu-nvidia-a100-sxm4-40gb-x2-")


def test_yaml_round_trip(tmp_path: Path, fake_nvml) -> None:
    fake_nvml([H100], unsupported=("nvmlDeviceGetAttributes_v2",))
    profile = collect_profile(measure=False)
    path = profile.save(tmp_path / "profiles" / "h100.yaml")
    assert load_profile(path) == profile
    assert load_profile(path).gpus[0]["sm_count"] == NA


def _profile_dict() -> dict:
    return collect_profile(measure=False).to_dict()


def test_wrong_schema_version_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**_profile_dict(), "schema_version": 99}))
    message = (
        f"{path}: hardware profile schema_version 99 is not supported; this autotune reads "
        "schema_version 1. Collect the profile again with `autotune profile`."
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_profile(path)


def test_unknown_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**_profile_dict(), "fingerprnt": "x"}))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown key 'fingerprnt' in "
                       r"hardware profile; allowed keys: schema_version, created, .*\.$"):
        load_profile(path)


def test_missing_key_and_bad_gpu_key_are_config_errors() -> None:
    data = _profile_dict()
    del data["measured"]
    missing = r"^p\.yaml: hardware profile is missing the key 'measured'\.$"
    with pytest.raises(ConfigError, match=missing):
        HardwareProfile.from_dict(data, "p.yaml")
    data = _profile_dict()
    data["gpus"] = [{"index": 0, "colour": "green"}]
    with pytest.raises(ConfigError, match=r"^p\.yaml: gpus\[0\] has unknown key 'colour'\.$"):
        HardwareProfile.from_dict(data, "p.yaml")
    data["gpus"] = "H100"
    with pytest.raises(ConfigError, match=r"^p\.yaml: 'gpus' must be a list, got str\.$"):
        HardwareProfile.from_dict(data, "p.yaml")
    data = _profile_dict()
    del data["amp"]["fp16"]
    amp_message = r"^p\.yaml: amp\.fp16 must be a mapping with a 'reason'\.$"
    with pytest.raises(ConfigError, match=amp_message):
        HardwareProfile.from_dict(data, "p.yaml")


def test_cpu_never_allows_fp16_and_bf16_needs_a_measurement() -> None:
    profile = collect_profile(measure=False)
    if profile.device != "cpu":
        pytest.skip("a CUDA device is present")
    allowed = profile.allowed_amp()
    assert allowed["fp16"] is not None and "17-66x slower" in allowed["fp16"]
    assert allowed["bf16"] == "not measured"


def test_bench_decides_cpu_bf16_from_the_measured_ratio() -> None:
    profile = collect_profile(measure=True)
    measured = profile.measured
    assert measured["cpu_matmul_fp32_tflops"] > 0 and measured["cpu_bf16_speedup"] > 0
    if profile.device == "cpu":
        bf16 = profile.amp["bf16"]
        assert bf16["faster"] is (measured["cpu_bf16_speedup"] > 1.0)
        assert bf16["allowed"] is bf16["faster"]
        assert f"{measured['cpu_bf16_speedup']:.2f}x" in bf16["reason"]
        assert profile.allowed_amp()["fp16"] is not None


def test_cuda_amp_decision() -> None:
    amp = decide_amp("cuda", False, {"cuda_fp16_speedup": 0.9})
    assert amp["bf16"] == {"supported": False, "faster": None, "allowed": False,
                           "reason": "bf16 is not supported natively by this GPU"}
    assert amp["fp16"]["allowed"] is False and amp["fp16"]["faster"] is False
    amp = decide_amp("cuda", True, {"cuda_bf16_speedup": 6.5})
    assert amp["bf16"]["allowed"]
    assert amp["bf16"]["reason"] == "measured bf16 matmul at 6.50x the speed of fp32"
    assert amp["fp16"]["allowed"] and amp["fp16"]["faster"] is None


def test_summary_names_the_cpu_and_the_missing_driver(fake_nvml) -> None:
    fake_nvml(init_error="NVMLError_DriverNotLoaded")  # as on a machine without an NVIDIA driver
    profile = collect_profile(measure=False)
    text = profile.summary()
    assert profile.host["cpu_model"] in text
    assert profile.fingerprint in text
    assert not profile.nvml["available"] and profile.nvml["message"]
    assert f"GPUs:     none; {profile.nvml['message']}" in text and "Driver Not Loaded" in text
    fake_nvml([H100])
    text = collect_profile(measure=False).summary()
    assert "GPU 0:    NVIDIA H100 80GB HBM3, 80 GiB, compute 9.0, 132 SMs" in text


def test_load_profile_needs_no_torch(tmp_path: Path) -> None:
    path = collect_profile(measure=False).save(tmp_path / "p.yaml")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from autotune.hardware import load_profile\n"
        f"print(load_profile({str(path)!r}).fingerprint)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == load_profile(path).fingerprint


def test_profile_fields_are_all_written() -> None:
    names = [f.name for f in dataclasses.fields(HardwareProfile)]
    assert list(_profile_dict()) == names


def test_logical_cores_follow_the_affinity_mask() -> None:
    if shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs taskset and os.sched_getaffinity (Linux)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process may run on one CPU only; pinning it changes nothing")
    code = "import json; from autotune.hardware import collect_host as c; print(json.dumps(c()))"
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pinned, here = json.loads(done.stdout), collect_host()
    assert pinned["logical_cores"] == 1
    assert here["logical_cores"] == len(os.sched_getaffinity(0))
    assert pinned["physical_cores"] == here["physical_cores"]  # the machine's, not the mask's
    assert pinned["machine_logical_cores"] == here["machine_logical_cores"] == os.cpu_count()
    pinned_print = fingerprint(pinned, [], NA)
    assert "-1c-" in pinned_print and pinned_print != fingerprint(here, [], NA)


def test_fingerprint_differs_between_one_and_two_logical_cores() -> None:
    host = collect_host()
    one = fingerprint({**host, "logical_cores": 1}, [], NA)
    two = fingerprint({**host, "logical_cores": 2}, [], NA)
    assert one != two and "-1c-" in one and "-2c-" in two


def test_fingerprint_differs_between_cpus_of_one_name_with_other_vector_units() -> None:
    host = {**collect_host(), "cpu_model": "AMD EPYC"}
    avx512 = fingerprint({**host, "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}, [], NA)
    avx2 = fingerprint({**host, "cpu_flags": ["avx2"]}, [], NA)
    assert avx512 != avx2 and avx512.rsplit("-", 1)[0] == avx2.rsplit("-", 1)[0]  # the slug alike, the hash not
    assert fingerprint({**host, "cpu_flags": ["avx512_bf16", "avx2", "avx512f"]}, [], NA) == avx512  # order aside


def test_torch_dtype_support_is_recorded() -> None:
    software = collect_profile(measure=False).software
    for key in ("torch_bf16_supported", "torch_fp16_supported"):
        assert software[key] in (True, False, NA)
    assert software["torch_dtype_support_source"]
    assert software["torch_num_threads"] >= 1


@pytest.mark.parametrize("path", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_committed_profile_is_named_by_the_fingerprint_its_facts_give_now(path: Path) -> None:
    # A profile whose fingerprint came from an older scheme would never match its own
    # machine by name again (a run there writes a second profile).
    profile = load_profile(path)
    assert profile.fingerprint == path.stem
    assert fingerprint(profile.host, profile.gpus, profile.nvml["driver_version"]) == path.stem


def test_an_older_profile_without_the_new_keys_still_loads() -> None:
    profile = load_profile(OLDER_PROFILE)
    assert profile.fingerprint == "cpu-amd-epyc-2c-24gib-ba403d39"
    assert "cpu_memory_copy_gbps" not in profile.measured
    assert "torch_bf16_supported" not in profile.software
    text = profile.summary()  # the summary shows what an older profile has, no more
    assert "  CPU matmul:  fp32 " in text and "Memory copy" not in text and "Took:" not in text
