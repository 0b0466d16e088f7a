"""The readable terminal summary of a hardware profile (`autotune profile`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune.hardware.nvml import NA
from autotune.hardware.host import _GIB, AMP_DTYPES, _gib

if TYPE_CHECKING:
    from autotune.hardware.profile import HardwareProfile


def _format_gpu(gpu: dict[str, Any]) -> str:
    """One line about one GPU."""
    memory = _gib(gpu["memory_total_bytes"])
    return (
        f"GPU {gpu['index']}:    {gpu['name']}, {memory} GiB, compute {gpu['compute_capability']}, "
        f"{gpu['sm_count']} SMs, {gpu['max_sm_clock_mhz']} MHz max SM clock, "
        f"{gpu['power_limit_w']} W limit, PCIe gen {gpu['pcie_generation']} x{gpu['pcie_width']}, "
        f"ECC {_on_off(gpu['ecc_enabled'])}, MIG {_on_off(gpu['mig_enabled'])}"
    )


def _on_off(value: Any) -> str:
    """"on", "off" or "N/A"."""
    return value if value == NA else ("on" if value else "off")


def summary_lines(p: HardwareProfile) -> list[str]:
    """The lines of ``HardwareProfile.summary``."""
    host, sw = p.host, p.software
    machine = host.get("machine_logical_cores", host["logical_cores"])
    usable = "" if machine == host["logical_cores"] else f" (of {machine} on the machine)"
    lines = [
        f"Hardware profile {p.fingerprint} (created {p.created})",
        f"CPU:      {host['cpu_model']}, {host['logical_cores']} logical{usable} / "
        f"{host['physical_cores']} physical cores, "
        f"{host['memory_total_bytes'] / _GIB:.1f} GiB memory, "
        f"load {host['load_average_1m']} (1 min)",
        f"CPU flags: {' '.join(host['cpu_flags']) or 'none of avx2/avx512f/avx512_bf16/amx'}",
    ]
    if p.nvml.get("available"):
        lines.append(f"Driver:   {p.nvml['driver_version']} (CUDA {p.nvml['cuda_driver_version']})")
        lines += [_format_gpu(gpu) for gpu in p.gpus] or ["GPUs:     none found by NVML"]
    else:
        lines.append(f"GPUs:     none; {p.nvml.get('message', '')}")
    lines.append(
        f"Software: Python {sw['python']}, torch {sw['torch']}, "
        f"CUDA {sw['cuda'] or 'none'}, cuDNN {sw['cudnn'] or 'none'}"
        + (f", {sw['torch_num_threads']} torch threads" if "torch_num_threads" in sw else "")
    )
    if "torch_bf16_supported" in sw:
        lines.append(
            f"torch reports: bf16 {_yes_no(sw['torch_bf16_supported'])}, "
            f"fp16 {_yes_no(sw.get('torch_fp16_supported', NA))} "
            f"({sw.get('torch_dtype_support_source', 'source not recorded')})"
        )
    lines.append(f"Device:   {p.device}")
    for dtype in AMP_DTYPES:
        entry = p.amp[dtype]
        verdict = "allowed" if entry.get("allowed") else "not allowed"
        lines.append(f"AMP {dtype}: {verdict}: {entry['reason']}")
    return lines + _measured_lines(p.measured)


def _yes_no(value: Any) -> str:
    """"yes", "no" or "N/A"."""
    return value if value == NA else ("yes" if value else "no")


# Summary rows of measured figures: (label, unit, {shown name: key}); "x" goes on each value.
_MEASURED_ROWS = (
    ("CPU matmul", "TFLOP/s", {"fp32": "cpu_matmul_fp32_tflops", "bf16": "cpu_matmul_bf16_tflops"}),
    ("CUDA matmul", "TFLOP/s", {name: f"cuda_matmul_{name}_tflops"
                                for name in ("fp32", "tf32", "fp16", "bf16")}),
    ("Memory copy", "GB/s (read + written)",
     {"CPU": "cpu_memory_copy_gbps", "CUDA": "cuda_memory_copy_gbps"}),
    ("Host to GPU", "GB/s", {"pinned": "h2d_pinned_gbps", "pageable": "h2d_pageable_gbps"}),
    ("Over fp32", "x", {"CPU bf16 autocast": "cpu_bf16_speedup",
                            "CUDA fp16": "cuda_fp16_speedup", "CUDA bf16": "cuda_bf16_speedup"}),
)
_RUN_KEYS = ("bench_seconds", "load_average_1m_before", "load_average_1m_after", "cpu_bench_rounds")


def _number(value: Any) -> str:
    """Four significant digits without an exponent: 0.1845, 34.18, 3012."""
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _measured_lines(m: dict[str, Any]) -> list[str]:
    """The measured figures, a row per kind with its unit; keys this version does not know
    are shown as they are, and a profile from before a key existed simply lacks its row."""
    if not m:
        return ["Measured: nothing (benchmarks skipped)"]
    lines = ["Measured:"]
    for label, unit, keys in _MEASURED_ROWS:
        each, end = ("x", "") if unit == "x" else ("", f" {unit}")
        shown = [f"{name} {_number(m[key])}{each}" for name, key in keys.items() if key in m]
        if shown:
            lines.append(f"  {label + ':':<13}{', '.join(shown)}{end}")
    if "bench_seconds" in m:
        load = ""
        if "load_average_1m_before" in m:
            before, after = m["load_average_1m_before"], m.get("load_average_1m_after", NA)
            load = f", load {before} before / {after} after"
        rounds = m.get("cpu_bench_rounds", 1)
        repeat = "; CPU set run twice (busy machine), best kept" if rounds == 2 else ""
        lines.append(f"  {'Took:':<13}{m['bench_seconds']} s{load}{repeat}")
    known = {key for _, _, keys in _MEASURED_ROWS for key in keys.values()} | set(_RUN_KEYS)
    other = [f"{key} {_number(value)}" for key, value in m.items() if key not in known]
    if other:
        lines.append(f"  {'Other:':<13}{', '.join(other)}")
    return lines
