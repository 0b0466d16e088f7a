"""Results kept in saved profiles, and warm starts from them (real Optuna on SQLite)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from autotune.machines import results
from autotune.hardware import collect_profile, load_profile
from autotune.search import parse_space, warmstart
import autotune.search.optuna_adapter as study_data

SPACE = parse_space(
    {
        "name": "t",
        "params": {
            "micro_batch_size": {"choices": [16, 32, 64, 128, 256]},
            "amp": {"choices": ["off", "bf16"]},
            "accumulation_steps": {"choices": [1, 2]},
        },
    },
    source="test space",
)


@pytest.fixture(scope="module")
def here():
    return collect_profile(measure=False)


def _machine(profile, fingerprint: str, memory_gib: float, cores: int = 2, device: str = "cpu"):
    host = {**profile.host, "memory_total_bytes": int(memory_gib * 2**30), "logical_cores": cores}
    return dataclasses.replace(profile, fingerprint=fingerprint, host=host, device=device)


def _entry(model: str, micro: int, amp: str = "off", value: float = 100.0):
    config = {"micro_batch_size": micro, "accumulation_steps": 1, "amp": amp}
    best = {"config": config, "throughput_samples_per_s": value}
    top = [best, {"config": {**config, "micro_batch_size": micro // 2}, "throughput_samples_per_s": value / 2}]
    return results.make_entry(model, "sha", "t", "cpu", best, top)


def test_record_adds_and_replaces_entries_per_model(here, tmp_path):
    path = results.record(tmp_path, here, _entry("m1", 64))
    assert path == tmp_path / f"{here.fingerprint}.yaml"
    results.record(tmp_path, here, _entry("m2", 32))
    results.record(tmp_path, here, _entry("m1", 128))
    saved = load_profile(path)
    assert [e["model"] for e in saved.tuned] == ["m2", "m1"]
    assert results.entry_for(saved, "m1")["best"]["config"]["micro_batch_size"] == 128
    assert saved.host == here.host  # the machine part is kept as it was


def test_most_similar_prefers_the_same_machine_then_the_nearest(here, tmp_path):
    current = _machine(here, "now", 16)
    results.record(tmp_path, _machine(here, "far", 256, cores=64), _entry("m", 512))
    results.record(tmp_path, _machine(here, "near", 32, cores=2), _entry("m", 256))
    results.record(tmp_path, _machine(here, "gpu", 16, device="cuda"), _entry("m", 64))
    results.record(tmp_path, _machine(here, "other-model", 16), _entry("x", 64))
    source, entry = results.most_similar(tmp_path, current, "m")
    assert source.fingerprint == "near"
    results.record(tmp_path, current, _entry("m", 16))
    assert results.most_similar(tmp_path, current, "m")[0].fingerprint == "now"
    assert results.most_similar(tmp_path, current, "unknown") is None


def test_distance_is_infinite_across_device_types(here):
    assert results.distance(_machine(here, "a", 16), _machine(here, "b", 16, device="cuda")) == float("inf")
    assert results.distance(_machine(here, "a", 16), _machine(here, "b", 16)) == 0.0
    assert results.distance(_machine(here, "a", 16), _machine(here, "b", 32)) == pytest.approx(0.6931, abs=1e-4)


@pytest.mark.parametrize("micro, ratio, expected", [(256, 0.5, 128), (256, 0.3, 64), (16, 0.5, 16), (64, 4.0, 256), (100, 1.0, 64)])
def test_micro_batch_scaled_by_memory_and_snapped(micro, ratio, expected):
    assert warmstart.scale_micro_batch(micro, ratio, (16, 32, 64, 128, 256)) == expected


def test_seed_knobs_keep_only_what_the_space_allows():
    knobs = warmstart.seed_knobs({"micro_batch_size": 256, "amp": "fp16", "accumulation_steps": 2, "num_workers": 4}, 0.5, SPACE)
    assert knobs == {"micro_batch_size": 128, "accumulation_steps": 2}


def test_warm_start_queues_scaled_seeds_after_the_default(here, tmp_path):
    results.record(tmp_path, _machine(here, "big", 32), _entry("m", 256, amp="bf16"))
    plan = warmstart.plan(tmp_path, _machine(here, "small", 16), "m", SPACE)
    assert plan["source_fingerprint"] == "big"
    assert plan["memory_ratio"] == pytest.approx(0.5)
    assert plan["seeds"] == [
        {"micro_batch_size": 128, "amp": "bf16", "accumulation_steps": 1},
        {"micro_batch_size": 64, "amp": "bf16", "accumulation_steps": 1},
    ]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    assert warmstart.apply(study, plan) == 2
    first = study.ask()
    assert SPACE.suggest(first) == plan["seeds"][0]
    assert first.user_attrs == {"role": "warm_start", "warm_start_from": "big"}
    assert study_data.attrs(study)["warm_start"]["seeds"] == plan["seeds"]


def test_no_plan_without_saved_results(here, tmp_path):
    assert warmstart.plan(tmp_path / "empty", here, "m", SPACE) is None


def test_re_profiling_keeps_the_recorded_results(here, tmp_path):
    path = results.record(tmp_path, here, _entry("m", 64))
    results.save_profile(path, dataclasses.replace(here, measured={"cpu_matmul_fp32_tflops": 1.0}))
    saved = load_profile(path)
    assert saved.measured == {"cpu_matmul_fp32_tflops": 1.0}
    assert [e["model"] for e in saved.tuned] == ["m"]
    # A file of another machine does not pass its results on.
    results.save_profile(path, dataclasses.replace(here, fingerprint="another-machine"))
    assert load_profile(path).tuned == []
