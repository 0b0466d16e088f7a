"""Warm start: begin a new study from what the same model tuned to on similar hardware.

The best configs saved for the model in the most similar profile (see autotune/machines/results.py)
are queued as the study's first trials after the default config, with the micro-batch
scaled by the ratio of the two machines' memory and every knob snapped to a choice the
current search space allows. The sampler then goes on from there as usual.
"""

from __future__ import annotations

from typing import Any

import optuna

from autotune.machines import results
from autotune.hardware.profile import HardwareProfile
from autotune.search.space import SearchSpace
import autotune.search.optuna_adapter as study_data


def scale_micro_batch(micro: int, ratio: float, choices: tuple[int, ...]) -> int:
    """The largest allowed micro-batch at most ``micro * ratio``, else the smallest choice."""
    target = micro * ratio
    fitting = [c for c in choices if c <= target]
    return max(fitting) if fitting else min(choices)


def seed_knobs(config: dict[str, Any], ratio: float, space: SearchSpace) -> dict[str, Any]:
    """The searched knobs of a saved ``config``, adapted to ``space``.

    Knobs whose saved value the space does not allow are left out, so the sampler picks
    them; the micro-batch is scaled by ``ratio`` and snapped to an allowed choice.
    """
    knobs: dict[str, Any] = {}
    for name in space.searched():
        param, value = space.params[name], config.get(name)
        if value is None:
            continue
        if name == "micro_batch_size" and param.choices is not None:
            knobs[name] = scale_micro_batch(int(value), ratio, param.choices)
        elif param.choices is not None and value in param.choices:
            knobs[name] = value
        elif param.choices is None and param.low <= value <= param.high:
            knobs[name] = value
    return knobs


def plan(profiles_dir: Any, current: HardwareProfile, model: str, space: SearchSpace) -> dict[str, Any] | None:
    """What a warm start would queue, or None when no saved results fit."""
    found = results.most_similar(profiles_dir, current, model)
    if found is None:
        return None
    source, entry = found
    mem_now, mem_then = results.memory_bytes(current), results.memory_bytes(source)
    ratio = mem_now / mem_then if mem_now and mem_then else 1.0
    seeds: list[dict[str, Any]] = []
    for item in [entry["best"], *entry.get("top", [])]:
        knobs = seed_knobs(item.get("config", {}), ratio, space)
        if knobs and knobs not in seeds:
            seeds.append(knobs)
    if not seeds:
        return None
    return {
        "source_fingerprint": source.fingerprint,
        "distance": 0.0 if source.fingerprint == current.fingerprint else results.distance(current, source),
        "memory_ratio": ratio,
        "source_throughput_samples_per_s": entry["best"].get("throughput_samples_per_s"),
        "seeds": seeds[: results.TOP_K],
    }


def apply(study: optuna.Study, warm: dict[str, Any]) -> int:
    """Queue the planned seeds in ``study`` and record the plan; returns how many."""
    for knobs in warm["seeds"]:
        study.enqueue_trial(knobs, user_attrs={"role": "warm_start", "warm_start_from": warm["source_fingerprint"]})
    study_data.put(study, "warm_start", warm)
    return len(warm["seeds"])
