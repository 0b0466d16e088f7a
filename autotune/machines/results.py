"""What models tuned to on each machine, kept in the saved hardware profiles.

After ``autotune run`` the machine's profile (``profiles/<fingerprint>.yaml``) gets an
entry under ``tuned`` for the model file: the chosen config, its throughput, and the best
few measured configs. ``autotune compare`` shows those entries side by side, and a later
run of the same model on other hardware starts its study from them (a warm start).

An entry (plain data, so the YAML stays readable and this module imports no torch):

    model: digits_cnn                 # the model file's stem
    model_sha256: 08c9...             # of the file that was tuned
    created: <when, ISO 8601 with the UTC offset>
    search_space: default
    device: cpu
    best:                             # the chosen config, as in tuned.yaml
      config: {micro_batch_size: 256, ...}
      throughput_samples_per_s: 11783.4
      default_throughput_samples_per_s: 5826.5
      speedup_vs_default: 2.02
      peak_memory_bytes: 404717568
    top:                              # the best measured trials, best first
      - config: {...}
        throughput_samples_per_s: 11884.0
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError
from autotune.hardware.profile import HardwareProfile, load_profile

TOP_K = 5  # measured configs kept per model for warm starts


def make_entry(model: str, model_sha256: str, search_space: str, device: str, best: dict[str, Any], top: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model,
        "model_sha256": model_sha256,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "search_space": search_space,
        "device": device,
        "best": best,
        "top": top[:TOP_K],
    }


def profile_path(profiles_dir: str | Path, fingerprint: str) -> Path:
    return Path(profiles_dir) / f"{fingerprint}.yaml"


def record(profiles_dir: str | Path, profile: HardwareProfile, entry: dict[str, Any]) -> Path:
    """Add ``entry`` to the machine's saved profile (created from ``profile`` if absent),
    replacing an earlier entry of the same model. Returns the profile's path."""
    path = profile_path(profiles_dir, profile.fingerprint)
    saved = load_profile(path) if path.is_file() else profile
    others = [e for e in saved.tuned if e.get("model") != entry["model"]]
    return dataclasses.replace(saved, tuned=[*others, entry]).save(path)


def save_profile(profiles_path: str | Path, profile: HardwareProfile) -> Path:
    """Save a freshly collected ``profile``, keeping the results already recorded in the
    file when it holds the same machine (re-profiling must not forget what was tuned)."""
    path = Path(profiles_path)
    if path.is_file():
        try:
            saved = load_profile(path)
        except ConfigError:
            saved = None
        if saved is not None and saved.fingerprint == profile.fingerprint:
            profile = dataclasses.replace(profile, tuned=saved.tuned)
    return profile.save(path)


def load_profiles(profiles_dir: str | Path) -> list[tuple[Path, HardwareProfile]]:
    """Every readable profile in ``profiles_dir``; unreadable ones are skipped, not fatal."""
    folder = Path(profiles_dir)
    found = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            found.append((path, load_profile(path)))
        except ConfigError:
            continue
    return found


def entry_for(profile: HardwareProfile, model: str) -> dict[str, Any] | None:
    return next((e for e in profile.tuned if e.get("model") == model), None)


def _positive(value: Any) -> float | None:
    """``value`` as a float when it is a positive number, else None ("N/A", missing)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _device_figure(p: HardwareProfile, gpu_key: str, host_key: str) -> float | None:
    """A figure of the device training runs on: the first GPU's on CUDA, else the host's."""
    if p.device == "cuda" and p.gpus:
        return _positive(p.gpus[0].get(gpu_key))
    return _positive(p.host.get(host_key))


def memory_bytes(profile: HardwareProfile) -> float | None:
    """The memory that bounds the micro-batch: the first GPU's, else the host's."""
    return _device_figure(profile, "memory_total_bytes", "memory_total_bytes")


def distance(a: HardwareProfile, b: HardwareProfile) -> float:
    """How unlike two machines are: sum of |log ratio| of memory, cores and matmul peak.

    Machines of different device types (a CPU and a GPU) are infinitely far apart.
    """
    if a.device != b.device:
        return math.inf
    total = 0.0
    for get in (memory_bytes, _cores, _fp32_tflops):
        x, y = get(a), get(b)
        if x and y:
            total += abs(math.log(x / y))
    return total


def _cores(p: HardwareProfile) -> float | None:
    return _device_figure(p, "sm_count", "logical_cores")


def _fp32_tflops(p: HardwareProfile) -> float | None:
    key = "cuda_matmul_fp32_tflops" if p.device == "cuda" else "cpu_matmul_fp32_tflops"
    return _positive(p.measured.get(key))


def most_similar(profiles_dir: str | Path, current: HardwareProfile, model: str) -> tuple[HardwareProfile, dict[str, Any]] | None:
    """The saved profile closest to ``current`` that has results for ``model``.

    The machine's own saved profile (same fingerprint) wins when it has results.
    """
    candidates = []
    for _, saved in load_profiles(profiles_dir):
        entry = entry_for(saved, model)
        if entry is None:
            continue
        d = 0.0 if saved.fingerprint == current.fingerprint else distance(current, saved)
        if math.isfinite(d):
            candidates.append((d, saved.fingerprint, saved, entry))
    if not candidates:
        return None
    _, _, saved, entry = min(candidates, key=lambda c: (c[0], c[1]))
    return saved, entry
