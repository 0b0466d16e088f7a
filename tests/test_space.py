"""Search spaces: loading, suggesting with real Optuna trials, removing choices,
feasibility and the hash (every validation message: test_space_errors.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autotune.config import Base, TrainConfig
from autotune.errors import ConfigError
from autotune.search.space import load_space, parse_space
from tests.spaces import _OK_PARAMS, _space, _whole

ASSETS = Path(__file__).parent / "assets"
DEFAULT_KNOBS = [
    "micro_batch_size",
    "accumulation_steps",
    # The GPU knobs next, so that a screening cut short still reaches them on a GPU.
    "cudnn_benchmark",
    "compile",
    "fp32_precision",
    "optimizer_impl",
    "expandable_segments",
    "num_workers",
    "persistent_workers",
    "pin_memory",
    "cpu_threads",
    "amp",
    "checkpointing",
    "channels_last",
    "lr_rule",
    "schedule",
]
FIXED_DEFAULT_KNOBS = ("persistent_workers", "lr_rule", "schedule")


# ---------------------------------------------------------------- loading


def test_default_space_loads():
    space = load_space("default")

    assert space.name == "default"
    assert list(space.params) == DEFAULT_KNOBS
    assert space.min_total_steps == 64
    assert Path(space.source).name == "default.yaml"
    assert space.params["amp"].choices == ("off", "bf16", "fp16")
    assert all(space.params[k].fixed for k in FIXED_DEFAULT_KNOBS)
    assert space.params["schedule"].choices == ("cosine",)
    assert space.params["cpu_threads"].choices == (1, 2, 4, 8, 16, 32)
    assert space.params["compile"].choices == ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
    assert space.searched() == [k for k in DEFAULT_KNOBS if k not in FIXED_DEFAULT_KNOBS]
    assert space.gated == {}
    assert load_space() == space


@pytest.mark.parametrize(("written", "read"), [("[false, true]", ("off", "default")), ("[off, reduce-overhead]",
                                                 ("off", "reduce-overhead"))])
def test_a_space_may_write_compile_as_a_switch_or_an_unquoted_off(tmp_path, written, read):
    # Spaces written when compile was a switch (false/true) keep loading; YAML reads an
    # unquoted `off` as false, which is the same choice.
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nparams:\n  compile: {{choices: {written}}}\n")
    assert load_space(path).params["compile"].choices == read


def test_unknown_builtin_name_lists_the_builtin_spaces():
    with pytest.raises(ConfigError, match=r"^No built-in search space named 'nope'; built-in spaces: (\w+, )*default(, \w+)*\.$") as info:
        load_space("nope")
    assert info.value.hint == "Pass a name from that list or the path of a .yaml file."


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
@pytest.mark.parametrize("as_str", [False, True])
def test_space_file_loads_by_path(tmp_path, suffix, as_str):
    path = tmp_path / f"mine{suffix}"
    path.write_text(
        "name: mine\n"
        "description: two knobs\n"
        "params:\n"
        "  micro_batch_size: {choices: [8, 16]}\n"
        '  amp: {choices: ["off"]}\n'
        "limits: {min_total_steps: 5}\n"
    )

    space = load_space(str(path) if as_str else path)

    assert (space.name, space.description, space.min_total_steps) == ("mine", "two knobs", 5)
    assert space.source == str(path)
    assert space.params["micro_batch_size"].choices == (8, 16)
    assert space.params["amp"].fixed


def test_missing_space_file_is_named(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=_whole(f"{path}: no such file.")):
        load_space(path)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nparams:\n  amp: {choices: [off, bf16\n")

    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid YAML: ") as info:
        load_space(path)
    assert str(info.value).endswith(".")
    assert isinstance(info.value.__cause__, yaml.YAMLError)


# ---------------------------------------------------------------- suggest and contains

SUGGEST_PARAMS = {
    "micro_batch_size": {"choices": [8, 16, 32]},
    "accumulation_steps": {"low": 1, "high": 7, "step": 2},
    "num_workers": {"low": 1, "high": 8, "log": True},
    "warmup": {"low": 0.0, "high": 0.2, "step": 0.05},
    "amp": {"choices": ["off"]},
    "lr_rule": {"choices": ["sqrt"]},
}
SEARCHED = {"micro_batch_size", "accumulation_steps", "num_workers", "warmup"}


def test_suggest_with_real_trials():
    space = _space(SUGGEST_PARAMS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)

        assert set(trial.params) == SEARCHED  # fixed knobs are set, not suggested
        assert values == {**trial.params, "amp": "off", "lr_rule": "sqrt"}
        assert values["micro_batch_size"] in (8, 16, 32)
        assert values["accumulation_steps"] in (1, 3, 5, 7)
        assert isinstance(values["num_workers"], int) and 1 <= values["num_workers"] <= 8
        assert 0.0 <= values["warmup"] <= 0.2
        assert math.isclose(values["warmup"] / 0.05, round(values["warmup"] / 0.05), abs_tol=1e-9)
        assert space.contains(values)
        TrainConfig.from_base(Base(), **values)  # every suggestion is a valid config
        study.tell(trial, 0.0)

    assert trial.distributions == {
        "micro_batch_size": CategoricalDistribution([8, 16, 32]),
        "accumulation_steps": IntDistribution(1, 7, step=2),
        "num_workers": IntDistribution(1, 8, log=True),
        "warmup": FloatDistribution(0.0, 0.2, step=0.05),
    }


def test_suggest_float_log_range():
    space = _space({"warmup": {"low": 0.01, "high": 0.5, "log": True}})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()

    values = space.suggest(trial)

    assert trial.distributions == {"warmup": FloatDistribution(0.01, 0.5, log=True)}
    assert 0.01 <= values["warmup"] <= 0.5


def test_suggest_with_fixed_trial():
    # FixedTrial raises for any name it was not given, so fixed knobs must not be suggested.
    space = _space(SUGGEST_PARAMS)
    chosen = {"micro_batch_size": 16, "accumulation_steps": 3, "num_workers": 2, "warmup": 0.1}

    values = space.suggest(optuna.trial.FixedTrial(chosen))

    assert values == {**chosen, "amp": "off", "lr_rule": "sqrt"}


def test_contains_checks_searched_knobs_only():
    space = _space(SUGGEST_PARAMS)
    inside = {"micro_batch_size": 16, "accumulation_steps": 3, "num_workers": 2, "warmup": 0.1}

    assert space.contains(inside)
    assert space.contains({**inside, "amp": "bf16"})  # fixed knobs are not searched
    assert not space.contains({**inside, "micro_batch_size": 64})
    assert not space.contains({**inside, "accumulation_steps": 9})
    assert not space.contains({**inside, "warmup": 0.3})
    assert not space.contains({k: v for k, v in inside.items() if k != "warmup"})


# ---------------------------------------------------------------- without, infeasible, sha256


def test_without_removes_a_choice_and_records_why():
    space = load_space("default")

    smaller = space.without("amp", "fp16", "fp16 is slow here")

    assert smaller.params["amp"].choices == ("off", "bf16")
    assert smaller.gated == {"amp": {"fp16": "fp16 is slow here"}}
    assert space.params["amp"].choices == ("off", "bf16", "fp16")  # the original is untouched
    assert space.gated == {}
    assert smaller.without("amp", "fp16", "again") is smaller  # already gone: no change


def test_without_a_knob_the_space_does_not_list_changes_nothing():
    space = _space(_OK_PARAMS)
    assert space.without("persistent_workers", True, "no workers") is space


def test_without_keys_reasons_by_the_choice_as_text():
    gated = load_space("default").without("pin_memory", True, "no GPU").gated
    assert gated == {"pin_memory": {"True": "no GPU"}}


def test_removing_the_last_choice_names_the_knob_and_the_reasons():
    space = _space({"amp": {"choices": ["off", "fp16"]}})
    one_left = space.without("amp", "fp16", "no GPU")

    with pytest.raises(ConfigError) as info:
        one_left.without("amp", "off", "fp32 is too slow")

    assert str(info.value) == (
        "space.yaml: every choice of `amp` was ruled out on this machine or model "
        "(fp16: no GPU; off: fp32 is too slow)."
    )
    assert info.value.hint == "Add a choice of `amp` that this machine can use."


def _cfg(micro: int, accum: int, epochs: int) -> TrainConfig:
    return TrainConfig(micro_batch_size=micro, accumulation_steps=accum, epochs=epochs)


def test_infeasible_when_too_few_optimizer_steps():
    space = load_space("default")  # min_total_steps: 64

    # ceil(1000 / 32) = 32 micro-batches, 8 optimizer steps an epoch, 16 in 2 epochs.
    reason = space.infeasible(_cfg(32, 4, 2), train_size=1000)

    assert reason == (
        "effective batch 128 leaves 16 optimizer steps in 2 epochs over 1000 samples; "
        "the space asks for at least 64 (limits.min_total_steps)"
    )


@pytest.mark.parametrize(
    ("micro", "accum", "epochs", "train_size"),
    [
        (16, 1, 10, 1000),  # 63 steps an epoch, 630 in all
        (32, 4, 8, 1000),  # exactly 64: 8 an epoch, counting the short last group
        (32, 1, 2, 1024),  # exactly 64
    ],
)
def test_feasible_configs(micro, accum, epochs, train_size):
    assert load_space("default").infeasible(_cfg(micro, accum, epochs), train_size) is None


def test_one_step_short_is_infeasible():
    reason = load_space("default").infeasible(_cfg(32, 1, 2), train_size=992)
    assert reason is not None and "leaves 62 optimizer steps in 2 epochs over 992 samples" in reason


def test_without_limits_nothing_is_infeasible():
    assert _space(_OK_PARAMS).infeasible(_cfg(32, 64, 1), train_size=10) is None


def test_sha256_is_stable_and_follows_the_choices():
    space = load_space("default")

    assert re.fullmatch(r"[0-9a-f]{64}", space.sha256)
    assert load_space("default").sha256 == space.sha256
    # The hash is of the content, not of where it was read from.
    assert parse_space(space.to_dict(), source="elsewhere.yaml").sha256 == space.sha256
    assert space.without("amp", "fp16", "slow").sha256 != space.sha256
    assert space.without("num_workers", 4, "cores").sha256 != space.without("num_workers", 2, "cores").sha256


@pytest.mark.parametrize(
    "knob, spec, message",
    [
        ("accumulation_steps", {"low": 1, "high": 8, "step": 0.5}, "`step` must be an integer for `accumulation_steps`, but got 0.5."),
        ("micro_batch_size", {"low": 8, "high": 64, "log": True, "step": 8}, "`log: true` and `step` cannot be combined; use one of them."),
        ("warmup", {"choices": [0.0, 0.9]}, "choice 0.9 is out of range: `warmup` must be in [0.0, 0.5]."),
        ("warmup", {"low": 0.0, "high": 0.7}, "`high` 0.7 is out of range: `warmup` must be in [0.0, 0.5]."),
        ("num_workers", {"low": -1, "high": 4}, "`low` -1 is out of range: `num_workers` must be >= 0."),
        ("micro_batch_size", {}, "must have either `choices` or both `low` and `high` (optional `log`, `step`); got keys (none)."),
    ],
)
def test_ranges_are_checked_before_optuna_sees_them(knob, spec, message):
    with pytest.raises(ConfigError, match=re.escape(f"space.yaml: `params.{knob}`") + ".*" + re.escape(message)):
        parse_space({"name": "t", "params": {knob: spec}}, source="space.yaml")
