"""``autotune compare``: saved hardware profiles side by side.

``compare(paths)`` loads two or more profiles (``profiles/*.yaml``) and builds plain data:
the specs and the measured peaks of each machine, every numeric row with the ratio of each
profile to the first, and, per model tuned on those machines (the profiles' ``tuned``
entries, see autotune/machines/results.py), the best config and its throughput side by side.
``compare_render`` turns that data into output (text, Markdown, JSON);
``compare_command`` is what the CLI calls.

Values keep their units in the data (bytes, MHz, W, TFLOP/s, samples/s); the renderers
show bytes as GiB and bytes/s as GB/s. "N/A" from NVML becomes None and shows as "-".
Per-GPU rows are those of GPU 0; the "GPUs" row names all of them.

This module imports neither torch nor optuna, so profiles can be compared anywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from autotune.errors import ConfigError
from autotune.config import TUNED_KNOBS, compile_mode
from autotune.hardware.nvml import NA
from autotune.hardware.profile import AMP_DTYPES, HardwareProfile, load_profile
from autotune.machines.compare_render import _GIB, _MISSING, _is_number, render_json, render_markdown, render_text

__all__ = [
    "FORMATS",
    "compare",
    "compare_command",
]

FORMATS = ("text", "markdown", "json")

Getter = Callable[[HardwareProfile], Any]


def _host(key: str) -> Getter:
    return lambda p: p.host.get(key)


def _gpu0(key: str) -> Getter:
    return lambda p: p.gpus[0].get(key) if p.gpus else None


def _gpu_names(p: HardwareProfile) -> str | None:
    """"NVIDIA H100 80GB HBM3", or "2 x NVIDIA A100-SXM4-80GB"; None without GPUs."""
    counts = Counter(str(gpu.get("name")) for gpu in p.gpus)
    return ", ".join(name if n == 1 else f"{n} x {name}" for name, n in counts.items()) or None


def _pcie(p: HardwareProfile) -> str | None:
    """"gen 5 x16" for GPU 0; None without GPUs or when NVML could read neither."""
    if not p.gpus:
        return None
    gen, width = p.gpus[0].get("pcie_generation", NA), p.gpus[0].get("pcie_width", NA)
    if gen == NA and width == NA:
        return None
    return f"gen {_MISSING if gen == NA else gen} x{_MISSING if width == NA else width}"


def _amp_allowed(dtype: str) -> Getter:
    return lambda p: p.amp.get(dtype, {}).get("allowed")


# (key, name, unit, getter). unit None: a text row, no ratio; "" a number without a unit.
SPEC_ROWS: tuple[tuple[str, str, str | None, Getter], ...] = (
    ("device", "device", None, lambda p: p.device),
    ("cpu_model", "CPU model", None, _host("cpu_model")),
    ("logical_cores", "logical cores", "", _host("logical_cores")),
    ("physical_cores", "physical cores", "", _host("physical_cores")),
    ("memory_total_bytes", "host memory", "bytes", _host("memory_total_bytes")),
    ("gpus", "GPUs", None, _gpu_names),
    ("gpu_memory_total_bytes", "GPU memory", "bytes", _gpu0("memory_total_bytes")),
    ("sm_count", "SM count", "", _gpu0("sm_count")),
    ("compute_capability", "compute capability", None, _gpu0("compute_capability")),
    ("max_sm_clock_mhz", "max SM clock", "MHz", _gpu0("max_sm_clock_mhz")),
    ("max_memory_clock_mhz", "max memory clock", "MHz", _gpu0("max_memory_clock_mhz")),
    ("power_limit_w", "power limit", "W", _gpu0("power_limit_w")),
    ("pcie", "PCIe", None, _pcie),
    ("driver_version", "NVIDIA driver", None, lambda p: p.nvml.get("driver_version")),
    ("cuda_driver_version", "CUDA (driver)", None, lambda p: p.nvml.get("cuda_driver_version")),
    ("cuda", "CUDA (torch build)", None, lambda p: p.software.get("cuda")),
    ("torch", "torch", None, lambda p: p.software.get("torch")),
    ("python", "Python", None, lambda p: p.software.get("python")),
    *((f"{d}_allowed", f"{d} allowed", None, _amp_allowed(d)) for d in sorted(AMP_DTYPES)),
)

# Unit by the end of a measured key's name, first match wins.
_KEY_UNITS = (
    ("_tflops", "TFLOP/s"),
    ("_bytes_per_s", "bytes/s"),
    ("_gb_per_s", "GB/s"),
    ("_gbps", "GB/s"),
    ("_bytes", "bytes"),
    ("_mhz", "MHz"),
    ("_per_s", "/s"),
    ("_seconds", "s"),
    ("_s", "s"),
)


def compare(paths: list[str | Path]) -> dict[str, Any]:
    """The side-by-side data of the profiles at ``paths`` (at least two).

    Returns {"profiles": [...], "specs": [row...], "measured": [row...], "tuned": [...]};
    a row is {"key", "name", "unit", "values", "ratios"}, ``ratios`` None for text rows.
    A missing file, bad YAML or another schema_version raises load_profile's ConfigError.
    """
    if len(paths) < 2:
        got = ", ".join(str(p) for p in paths) or "none"
        raise ConfigError(
            f"compare needs at least 2 hardware profiles, but got {len(paths)} ({got}).",
            hint="Pass two or more profile files, e.g. "
            "`autotune compare profiles/A.yaml profiles/B.yaml`.",
        )
    profiles = [load_profile(path) for path in paths]
    entries = [_tuned_entries(p, str(path)) for p, path in zip(profiles, paths)]
    return {
        "profiles": _profile_labels(paths, profiles),
        "ratios_to": 1,
        "specs": [
            _row(key, name, unit, [get(p) for p in profiles]) for key, name, unit, get in SPEC_ROWS
        ],
        "measured": _measured_rows(profiles),
        "tuned": _tuned_models(entries),
    }


def _profile_labels(
    paths: list[str | Path], profiles: list[HardwareProfile]
) -> list[dict[str, Any]]:
    """Per profile its index, a unique label (fingerprint and file name), file and path."""
    seen: Counter[str] = Counter()
    out = []
    for i, (path, p) in enumerate(zip(paths, profiles), start=1):
        label = f"{p.fingerprint or '(no fingerprint)'} ({Path(path).name})"
        seen[label] += 1
        if seen[label] > 1:  # the same file (or name) twice: still two distinct columns
            label = f"{label} #{seen[label]}"
        out.append(
            {
                "index": i,
                "label": label,
                "fingerprint": p.fingerprint,
                "file": Path(path).name,
                "path": str(path),
            }
        )
    return out


def _clean(value: Any) -> Any:
    """NVML's "N/A" and NaN become None; everything else is kept."""
    if value == NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _ratio(value: Any, first: Any) -> float | None:
    """value / first; None where either is missing or not a number, or first is 0."""
    if not (_is_number(value) and _is_number(first)) or first == 0:
        return None
    return value / first


def _row(
    key: str, name: str, unit: str | None, values: list[Any], ratios: bool = True
) -> dict[str, Any]:
    """One row; a numeric row (unit not None) keeps numbers only and gets ratios to the first."""
    values = [_clean(v) for v in values]
    if unit is not None:
        values = [v if _is_number(v) else None for v in values]
    with_ratios = unit is not None and ratios
    return {
        "key": key,
        "name": name,
        "unit": unit,
        "values": values,
        "ratios": [_ratio(v, values[0]) for v in values] if with_ratios else None,
    }


def _measured_unit(key: str) -> str:
    return next((unit for end, unit in _KEY_UNITS if key.endswith(end)), "")


def _device_peak(dtype: str) -> Getter:
    """The matmul peak in ``dtype`` on the device the profile trains on (cuda or cpu)."""
    return lambda p: p.measured.get(
        f"{'cuda' if p.device == 'cuda' else 'cpu'}_matmul_{dtype}_tflops"
    )


def _measured_rows(profiles: list[HardwareProfile]) -> list[dict[str, Any]]:
    """The training device's matmul peaks, then every key under ``measured`` of any profile."""
    rows = []
    for dtype in ("fp32", "bf16", "fp16"):
        peaks = [_device_peak(dtype)(p) for p in profiles]
        name = f"{dtype} matmul on the training device"
        rows.append(_row(f"device_matmul_{dtype}_tflops", name, "TFLOP/s", peaks))
    for key in dict.fromkeys(key for p in profiles for key in p.measured):
        rows.append(_row(key, key, _measured_unit(key), [p.measured.get(key) for p in profiles]))
    return rows


def _tuned_entries(profile: HardwareProfile, source: str) -> dict[str, dict[str, Any]]:
    """The profile's tuned entries by model name; a malformed entry is a ConfigError."""
    if not isinstance(profile.tuned, list):
        got = type(profile.tuned).__name__
        raise ConfigError(f"{source}: 'tuned' must be a list, got {got}.")
    found: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(profile.tuned):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(
                f"{source}: tuned[{i}] must be a mapping with a 'model' name, got {entry!r}."
            )
        best = entry.get("best", {})
        if not isinstance(best, dict) or not isinstance(best.get("config", {}), dict):
            raise ConfigError(
                f"{source}: tuned[{i}] ({entry['model']}): 'best' must be a mapping "
                f"with a 'config' mapping, got {best!r}."
            )
        found.setdefault(entry["model"], entry)
    return found


def _tuned_models(entries: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per model: on which profiles it was tuned and its best configs side by side.

    Models tuned on two or more of the profiles come first; those on one are flagged.
    """
    models = list(dict.fromkeys(model for by_model in entries for model in by_model))
    out = []
    for model in models:
        per_profile = [by_model.get(model) for by_model in entries]
        on = [i for i, entry in enumerate(per_profile, start=1) if entry is not None]
        hashes = {entry.get("model_sha256") for entry in per_profile if entry is not None}
        out.append(
            {
                "model": model,
                "tuned_on": on,
                "only_one": len(on) == 1,
                "same_model_file": len(hashes) == 1,
                "rows": _tuned_rows(per_profile),
            }
        )
    return sorted(out, key=lambda m: m["only_one"])  # stable: first-seen order otherwise


def _knob(config: dict[str, Any], knob: str) -> Any:
    """A config's knob as one spelling: a profile written when ``compile`` was a yes/no
    stores ``false`` where a later one stores "off"."""
    value = config.get(knob)
    return compile_mode(value) if knob == "compile" and value is not None else value


def _tuned_rows(per_profile: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The best config's knobs, its throughput (with ratios), speedup and peak memory."""
    bests = [(entry or {}).get("best", {}) for entry in per_profile]
    configs = [best.get("config", {}) for best in bests]
    rows = [_row(knob, knob, None, [_knob(c, knob) for c in configs]) for knob in TUNED_KNOBS]
    figures = (  # key, name, unit, with ratios: only the throughput is compared
        ("throughput_samples_per_s", "throughput", "samples/s", True),
        ("speedup_vs_default", "speedup vs default", "", False),
        ("peak_memory_bytes", "peak memory", "bytes", False),
    )
    for key, name, unit, ratios in figures:
        rows.append(_row(key, name, unit, [b.get(key) for b in bests], ratios=ratios))
    return rows


def compare_command(paths: list[str], fmt: str = "text") -> str:
    """``autotune compare PATHS --format FMT``: the rendered comparison."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}.")
    renderers = {"text": render_text, "markdown": render_markdown, "json": render_json}
    return renderers[fmt](compare(paths))
