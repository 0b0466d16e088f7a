"""Search spaces: every validation message of a space YAML, naming the file and the key."""

from __future__ import annotations

import pytest
import yaml

from autotune.errors import ConfigError
from autotune.search.space import parse_space
from tests.spaces import _OK_PARAMS, SRC, _space, _whole


# ---------------------------------------------------------------- validation

_TUNABLE_LIST = (
    "micro_batch_size, accumulation_steps, num_workers, pin_memory, persistent_workers, "
    "cpu_threads, amp, checkpointing, channels_last, cudnn_benchmark, compile, fp32_precision, optimizer_impl, expandable_segments, lr_rule, "
    "warmup, schedule"
)

TOP_LEVEL_ERRORS = [
    pytest.param([1, 2], "space.yaml: a search space must be a mapping, but got list.", id="not-a-mapping"),
    pytest.param(None, "space.yaml: a search space must be a mapping, but got NoneType.", id="empty-file"),
    pytest.param(
        {"name": "t", "params": _OK_PARAMS, "limts": {}},
        "space.yaml: unknown top-level key 'limts'; allowed: name, description, params, limits.",
        id="unknown-top-key",
    ),
    pytest.param({"params": _OK_PARAMS}, "space.yaml: `name` must be a non-empty string, but got None.", id="no-name"),
    pytest.param({"name": "", "params": _OK_PARAMS}, "space.yaml: `name` must be a non-empty string, but got ''.", id="empty-name"),
    pytest.param({"name": 3, "params": _OK_PARAMS}, "space.yaml: `name` must be a non-empty string, but got 3.", id="int-name"),
    *(
        pytest.param(
            {"name": "t", **params},
            "space.yaml: `params` must be a non-empty mapping of knob names to choices or ranges, "
            f"but got {got}.",
            id=f"params-{label}",
        )
        for label, params, got in [
            ("missing", {}, "None"),
            ("empty", {"params": {}}, "{}"),
            ("list", {"params": ["amp"]}, "['amp']"),
        ]
    ),
    pytest.param(
        {"name": "t", "params": _OK_PARAMS, "limits": []},
        "space.yaml: `limits` must be a mapping.",
        id="limits-empty-list",
    ),
    pytest.param(
        {"name": "t", "params": _OK_PARAMS, "limits": [64]},
        "space.yaml: `limits` must be a mapping.",
        id="limits-not-a-mapping",
    ),
    pytest.param(
        {"name": "t", "params": _OK_PARAMS, "limits": {"max_steps": 10}},
        "space.yaml: unknown key in `limits` 'max_steps'; allowed: min_total_steps, max_micro_batch.",
        id="unknown-limits-key",
    ),
    *(
        pytest.param(
            {"name": "t", "params": _OK_PARAMS, "limits": {"min_total_steps": value}},
            f"space.yaml: `limits.min_total_steps` must be an integer >= 0, but got {value!r}.",
            id=f"min-total-steps-{value!r}",
        )
        for value in (-1, 1.5, True, "64")
    ),
]


@pytest.mark.parametrize(("data", "message"), TOP_LEVEL_ERRORS)
def test_top_level_errors(data, message):
    with pytest.raises(ConfigError, match=_whole(message)):
        parse_space(data, source=SRC)


PARAM_ERRORS = [
    pytest.param(
        "lr", {"choices": [0.1]},
        f"space.yaml: unknown knob 'lr' under `params`; tunable knobs: {_TUNABLE_LIST}.",
        id="unknown-knob",
    ),
    pytest.param(
        "micro_batch_size", [16, 32],
        "space.yaml: `params.micro_batch_size` must be a mapping with `choices` or `low`/`high`, but got [16, 32].",
        id="spec-not-a-mapping",
    ),
    pytest.param(
        "micro_batch_size", {"choices": [16], "low": 1, "high": 2},
        "space.yaml: `params.micro_batch_size`: `choices` cannot be combined with high, low.",
        id="choices-and-range",
    ),
    pytest.param(
        "micro_batch_size", {"low": 1},
        "space.yaml: `params.micro_batch_size` must have either `choices` or both `low` and `high` "
        "(optional `log`, `step`); got keys low.",
        id="low-without-high",
    ),
    pytest.param(
        "micro_batch_size", {"values": [16]},
        "space.yaml: `params.micro_batch_size` must have either `choices` or both `low` and `high` "
        "(optional `log`, `step`); got keys values.",
        id="neither-choices-nor-range",
    ),
    pytest.param(
        "amp", {"choices": []},
        "space.yaml: `params.amp`: `choices` must be a non-empty list, but got [].",
        id="empty-choices",
    ),
    pytest.param(
        "amp", {"choices": "bf16"},
        "space.yaml: `params.amp`: `choices` must be a non-empty list, but got 'bf16'.",
        id="choices-not-a-list",
    ),
    pytest.param(
        "micro_batch_size", {"choices": [16, "32"]},
        "space.yaml: `params.micro_batch_size`: choice '32' must be of type int.",
        id="str-for-int",
    ),
    pytest.param(
        "micro_batch_size", {"choices": [True]},
        "space.yaml: `params.micro_batch_size`: choice True must be of type int.",
        id="bool-for-int",
    ),
    pytest.param(
        "pin_memory", {"choices": [1]},
        "space.yaml: `params.pin_memory`: choice 1 must be of type bool.",
        id="int-for-bool",
    ),
    pytest.param(
        "warmup", {"choices": [0.1, "0.2"]},
        "space.yaml: `params.warmup`: choice '0.2' must be of type float.",
        id="str-for-float",
    ),
    pytest.param(
        "amp", {"choices": ["off", "fp8"]},
        "space.yaml: `params.amp`: choice 'fp8' is not allowed; allowed: off, fp16, bf16.",
        id="amp-not-allowed",
    ),
    pytest.param(
        "lr_rule", {"choices": ["cubic"]},
        "space.yaml: `params.lr_rule`: choice 'cubic' is not allowed; allowed: linear, sqrt, none.",
        id="lr-rule-not-allowed",
    ),
    pytest.param(
        "schedule", {"choices": ["cosine", "step"]},
        "space.yaml: `params.schedule`: choice 'step' is not allowed; allowed: cosine, onecycle.",
        id="schedule-not-allowed",
    ),
    pytest.param(
        "schedule", {"low": 0, "high": 1},
        "space.yaml: `params.schedule`: a range needs a numeric knob; `schedule` takes str values, so use `choices`.",
        id="range-on-schedule",
    ),
    pytest.param(
        "cpu_threads", {"choices": [-1, 2]},
        "space.yaml: `params.cpu_threads`: choice -1 is out of range: `cpu_threads` must be >= 0.",
        id="cpu-threads-negative",
    ),
    pytest.param(
        "cpu_threads", {"low": -2, "high": 8},
        "space.yaml: `params.cpu_threads`: `low` -2 is out of range: `cpu_threads` must be >= 0.",
        id="cpu-threads-range-negative",
    ),
    pytest.param(
        "cpu_threads", {"choices": [2, "4"]},
        "space.yaml: `params.cpu_threads`: choice '4' must be of type int.",
        id="cpu-threads-str",
    ),
    *(
        pytest.param(
            knob, {"choices": [False, 1]},
            f"space.yaml: `params.{knob}`: choice 1 must be of type bool.",
            id=f"{knob}-int",
        )
        for knob in ("channels_last", "cudnn_benchmark", "expandable_segments")
    ),
    pytest.param(
        "compile", {"choices": ["off", 1]},
        "space.yaml: `params.compile`: choice 1 must be of type str.",
        id="compile-int",
    ),
    pytest.param(
        "optimizer_impl", {"choices": ["auto", "apex"]},
        "space.yaml: `params.optimizer_impl`: choice 'apex' is not allowed; allowed: auto, plain, foreach, fused.",
        id="optimizer-impl-unknown",
    ),
    pytest.param(
        "micro_batch_size", {"choices": [16, 32, 16]},
        "space.yaml: `params.micro_batch_size`: `choices` has duplicates: [16, 32, 16].",
        id="duplicates",
    ),
    pytest.param(
        "micro_batch_size", {"choices": [0, 16]},
        "space.yaml: `params.micro_batch_size`: choice 0 is out of range: `micro_batch_size` must be >= 1.",
        id="micro-batch-0",
    ),
    pytest.param(
        "accumulation_steps", {"choices": [0]},
        "space.yaml: `params.accumulation_steps`: choice 0 is out of range: `accumulation_steps` must be >= 1.",
        id="accumulation-0",
    ),
    pytest.param(
        "num_workers", {"choices": [-1, 0]},
        "space.yaml: `params.num_workers`: choice -1 is out of range: `num_workers` must be >= 0.",
        id="num-workers-negative",
    ),
    pytest.param(
        "amp", {"low": 0, "high": 1},
        "space.yaml: `params.amp`: a range needs a numeric knob; `amp` takes str values, so use `choices`.",
        id="range-on-str-knob",
    ),
    pytest.param(
        "pin_memory", {"low": 0, "high": 1},
        "space.yaml: `params.pin_memory`: a range needs a numeric knob; `pin_memory` takes bool values, so use `choices`.",
        id="range-on-bool-knob",
    ),
    pytest.param(
        "micro_batch_size", {"low": 64, "high": 8},
        "space.yaml: `params.micro_batch_size`: `low <= high` must hold, but got (low=64, high=8).",
        id="low-above-high",
    ),
    pytest.param(
        "warmup", {"low": 0.2, "high": 0.1},
        "space.yaml: `params.warmup`: `low <= high` must hold, but got (low=0.2, high=0.1).",
        id="low-above-high-float",
    ),
    pytest.param(
        "warmup", {"low": "0.1", "high": 0.2},
        "space.yaml: `params.warmup`: `low` must be a number, but got '0.1'.",
        id="low-not-a-number",
    ),
    pytest.param(
        "micro_batch_size", {"low": 8, "high": 64.0},
        "space.yaml: `params.micro_batch_size`: `high` must be an integer for `micro_batch_size`, but got 64.0.",
        id="float-bound-for-int",
    ),
    pytest.param(
        "warmup", {"low": 0.0, "high": 0.1, "log": True},
        "space.yaml: `params.warmup`: `log: true` needs `low` > 0, but got low=0.0.",
        id="log-from-zero",
    ),
    pytest.param(
        "micro_batch_size", {"low": -8, "high": 64, "log": True},
        "space.yaml: `params.micro_batch_size`: `low` -8 is out of range: `micro_batch_size` must be >= 1.",
        id="range-below-bound",
    ),
    pytest.param(
        "warmup", {"low": 0.01, "high": 0.1, "log": "yes"},
        "space.yaml: `params.warmup`: `log` must be true or false, but got 'yes'.",
        id="log-not-bool",
    ),
    *(
        pytest.param(
            "warmup", {"low": 0.0, "high": 0.2, "step": step},
            f"space.yaml: `params.warmup`: `step` must be a number > 0, but got {step!r}.",
            id=f"step-{step!r}",
        )
        for step in (0, -0.05, "0.05", True)
    ),
]


@pytest.mark.parametrize(("knob", "spec", "message"), PARAM_ERRORS)
def test_param_errors(knob, spec, message):
    with pytest.raises(ConfigError, match=_whole(message)):
        _space({knob: spec})


def test_unquoted_off_for_amp_asks_for_quotes():
    data = yaml.safe_load("name: t\nparams:\n  amp: {choices: [off, bf16]}\n")
    assert data["params"]["amp"]["choices"][0] is False  # what YAML 1.1 makes of `off`

    with pytest.raises(ConfigError) as info:
        parse_space(data, source=SRC)

    assert str(info.value) == (
        "space.yaml: `params.amp`: choice False is not a string; "
        "YAML reads unquoted off/on/no/yes as booleans."
    )
    assert info.value.hint == 'Quote it: "off".'


def test_quoted_off_and_every_value_kind_parse():
    space = _space(
        {
            "micro_batch_size": {"low": 8, "high": 256, "log": True},
            "accumulation_steps": {"low": 1, "high": 7, "step": 2},
            "num_workers": {"choices": [0, 2]},
            "pin_memory": {"choices": [False, True]},
            "amp": {"choices": ["off", "bf16"]},
            "lr_rule": {"choices": ["linear", "sqrt", "none"]},
            "warmup": {"choices": [0, 0.1]},  # an int is a valid float
            "schedule": {"choices": ["cosine", "onecycle"]},
            "cpu_threads": {"low": 0, "high": 16},
            "compile": {"choices": [True, False]},
        },
        description="all kinds",
    )

    p = space.params
    assert (p["micro_batch_size"].low, p["micro_batch_size"].high, p["micro_batch_size"].log) == (8, 256, True)
    assert (p["accumulation_steps"].step, p["accumulation_steps"].choices) == (2, None)
    assert p["amp"].choices == ("off", "bf16")
    assert p["warmup"].choices == (0, 0.1)
    assert space.min_total_steps == 0
    assert parse_space(space.to_dict(), source="copy.yaml").params == space.params
