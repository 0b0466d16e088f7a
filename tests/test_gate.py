"""Gating: the choices a machine or a model cannot use, or uses to no benefit, removed or
fixed with their reasons, on CPU and GPU facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from autotune.config import Base, TrainConfig
from autotune.search.gate import Facts, gate, has_conv2d
from autotune.search.space import Param, SearchSpace, load_space, parse_space

ASSETS = Path(__file__).parent / "assets"
_OK_PARAMS = {"micro_batch_size": {"choices": [16, 32]}}


def _space(params: dict, **top) -> SearchSpace:
    return parse_space({"name": "t", "params": params, **top}, source="space.yaml")


CPU_FACTS = Facts(
    device_type="cpu",
    amp_blocked={"fp16": "slow", "bf16": None},
    logical_cores=2,
    has_blocks=False,
    train_size=100,
)
CUDA_FACTS = Facts(
    device_type="cuda",
    amp_blocked={"fp16": None, "bf16": None},
    logical_cores=16,
    has_blocks=True,
    train_size=10_000,
    has_conv=True,
)
NO_CONV = "the model has no Conv2d layers: channels_last only changes how conv inputs are laid out"
NO_CUDNN = "no GPU: cuDNN is NVIDIA's GPU library, so on the CPU the setting does nothing"
NO_COMPILE = (
    "no GPU: on the CPU, compiling the example models took 15-25 s (measured), as long as "
    "their whole final runs or longer, for steps at most 1.2x faster"
)
THREADS_ON_GPU = "not searched on a GPU: the CPU only feeds it, so torch's default thread count is kept"
NO_TF32 = "no GPU: TF32 is a mode of NVIDIA's tensor cores (sm_80 and later)"
NO_IMPL = ("no GPU: foreach and fused optimizers save a GPU's kernel launches (one per parameter and op in the plain "
           "loop); torch's own pick is kept on the CPU")
NO_SEGMENTS = "no GPU: a setting of the CUDA caching allocator"
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


def test_gate_on_a_cpu_removes_what_it_cannot_use():
    space = load_space("default")

    gated = gate(space, CPU_FACTS)

    p = gated.params
    assert p["amp"].choices == ("off", "bf16")
    assert p["pin_memory"].choices == (False,)
    assert p["checkpointing"].choices == (False,)
    assert p["num_workers"].choices == (0, 1, 2)
    assert p["micro_batch_size"].choices == (16, 32, 64)
    assert p["cpu_threads"].choices == (1, 2)
    assert p["channels_last"].choices == p["cudnn_benchmark"].choices == p["expandable_segments"].choices == (False,)
    assert p["compile"].choices == ("off",)
    assert p["fp32_precision"].choices == ("ieee",) and p["optimizer_impl"].choices == ("auto",)
    assert p["accumulation_steps"] == space.params["accumulation_steps"]
    assert p["lr_rule"] == space.params["lr_rule"]
    too_large = "larger than the training set (100 samples)"
    threads = "more threads than the 2 logical cores"
    assert gated.gated == {
        "amp": {"fp16": "slow"},
        "pin_memory": {"True": "no GPU: pinned memory only speeds copies from host to GPU"},
        "cudnn_benchmark": {"True": NO_CUDNN},
        "compile": {mode: NO_COMPILE for mode in COMPILE_MODES[1:]},
        "fp32_precision": {"tf32": NO_TF32},
        "optimizer_impl": {impl: NO_IMPL for impl in ("plain", "foreach", "fused")},
        "expandable_segments": {"True": NO_SEGMENTS},
        "channels_last": {"True": NO_CONV},
        "checkpointing": {
            "True": "the model has no repeated blocks to checkpoint "
            "(define checkpoint_blocks(model) to name them)"
        },
        "cpu_threads": {"4": threads, "8": threads, "16": threads, "32": threads},
        "num_workers": {"4": "more DataLoader workers than the 2 logical cores"},
        "micro_batch_size": {"128": too_large, "256": too_large, "512": too_large},
    }
    assert space.gated == {}  # the input is untouched


def test_gate_on_a_cpu_keeps_channels_last_for_a_conv_model():
    # Measured on the development CPU: channels_last made the digits CNN's steps faster.
    gated = gate(load_space("default"), dataclasses.replace(CPU_FACTS, has_conv=True))

    assert gated.params["channels_last"].choices == (False, True)
    assert "channels_last" not in gated.gated
    assert gated.params["cudnn_benchmark"].choices == (False,) and gated.params["compile"].choices == ("off",)


def test_gate_on_a_gpu_with_blocks_and_convs_only_fixes_cpu_threads():
    space = load_space("default")

    gated = gate(space, CUDA_FACTS)

    assert gated.params == {**space.params, "cpu_threads": Param("cpu_threads", choices=(0,))}
    assert gated.gated == {"cpu_threads": {str(n): THREADS_ON_GPU for n in (1, 2, 4, 8, 16, 32)}}
    assert gated.sha256 != space.sha256
    for knob in ("channels_last", "cudnn_benchmark", "expandable_segments"):
        assert gated.params[knob].choices == (False, True)
    assert gated.params["compile"].choices == COMPILE_MODES
    assert gated.params["fp32_precision"].choices == ("ieee", "tf32")
    assert gated.params["optimizer_impl"].choices == ("auto", "plain", "foreach", "fused")


def test_gate_on_a_gpu_before_ampere_removes_tf32():
    gated = gate(load_space("default"), dataclasses.replace(CUDA_FACTS, cuda_capability=(7, 5)))

    assert gated.params["fp32_precision"].choices == ("ieee",)
    assert gated.gated["fp32_precision"] == {"tf32": "TF32 needs compute capability 8.0 or later; this GPU is 7.5"}
    hopper = gate(load_space("default"), dataclasses.replace(CUDA_FACTS, cuda_capability=(9, 0)))
    assert hopper.params["fp32_precision"].choices == ("ieee", "tf32")


def test_gate_on_a_gpu_keeps_the_implementations_the_models_optimizer_offers():
    import torch

    from autotune.search.gate import gpu_facts

    # A model file's own optimizer: SGD takes foreach and fused; LBFGS takes neither.
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = gpu_facts("cpu", torch.optim.SGD(params, lr=0.1))
    assert sgd == {"cuda_capability": None, "optimizer_impls": ("auto", "plain", "foreach", "fused"),
                   "optimizer_name": "SGD"}
    lbfgs = gpu_facts("cpu", torch.optim.LBFGS(params))
    gated = gate(load_space("default"), dataclasses.replace(CUDA_FACTS, **lbfgs))
    assert gated.params["optimizer_impl"].choices == ("auto",)
    assert gated.gated["optimizer_impl"]["fused"] == (
        "the model's optimizer (LBFGS) has no fused implementation (it takes no `fused` argument)")
    assert gated.gated["optimizer_impl"]["plain"] == (
        "the model's optimizer (LBFGS) has no plain implementation (it takes no `foreach` argument)")

def test_gate_on_a_gpu_without_convs_fixes_channels_last():
    gated = gate(load_space("default"), dataclasses.replace(CUDA_FACTS, has_conv=False))

    assert gated.params["channels_last"].choices == (False,)
    assert gated.gated["channels_last"] == {"True": NO_CONV}
    assert gated.params["cudnn_benchmark"].choices == (False, True)
    assert gated.params["compile"].choices == COMPILE_MODES


def test_gate_leaves_a_user_space_that_fixes_gpu_knobs_alone_where_it_agrees():
    # A space that fixes compile off and lists no channels_last: nothing to record.
    space = _space({"compile": {"choices": [False]}, "cpu_threads": {"choices": [1, 2]}})

    assert gate(space, CPU_FACTS) == space


def test_has_conv2d():
    from autotune.model.task import load_task

    assert has_conv2d(load_task(ASSETS / "tiny_cnn.py").build_model())
    assert not has_conv2d(load_task(ASSETS / "tiny_mlp.py").build_model())


# ---------------------------------------------------------------- fixed_to


def test_fixed_to_keeps_one_value_and_records_why_for_each_dropped_choice():
    space = _space({"cpu_threads": {"choices": [1, 2, 4]}, "amp": {"choices": ["off", "bf16"]}})

    fixed = space.fixed_to("cpu_threads", 2, "two it is")

    assert fixed.params["cpu_threads"] == Param("cpu_threads", choices=(2,)) and fixed.params["cpu_threads"].fixed
    assert fixed.gated == {"cpu_threads": {"1": "two it is", "4": "two it is"}}
    assert fixed.params["amp"] == space.params["amp"] and space.gated == {}
    assert fixed.searched() == ["amp"]
    assert fixed.fixed_to("cpu_threads", 2, "again") is fixed  # already fixed there


def test_fixed_to_a_value_the_space_does_not_list_or_a_range():
    space = _space({"cpu_threads": {"low": 1, "high": 8}, "compile": {"choices": [True]}})

    fixed = space.fixed_to("cpu_threads", 0, "torch's default").fixed_to("compile", "off", "no GPU")

    assert fixed.params["cpu_threads"].choices == (0,) and fixed.params["compile"].choices == ("off",)
    assert fixed.gated == {"cpu_threads": {"[1, 8]": "torch's default"}, "compile": {"default": "no GPU"}}
    study = optuna.create_study()
    assert fixed.suggest(study.ask()) == {"cpu_threads": 0, "compile": "off"}


def test_fixed_to_a_knob_the_space_does_not_list_changes_nothing():
    space = _space(_OK_PARAMS)
    assert space.fixed_to("compile", "off", "no GPU") is space


PERSISTENT = {
    "num_workers": {"choices": [0, 4]},
    "persistent_workers": {"choices": [False, True]},
    "amp": {"choices": ["off", "fp16"]},
    "pin_memory": {"choices": [False, True]},
    "checkpointing": {"choices": [False, True]},
}


def test_gate_leaves_persistent_workers_to_the_config():
    # With only 0 workers left the knob means nothing; TrainConfig turns it off, so gating
    # need not (and a space that fixes it to true must not become an error).
    gated = gate(_space(PERSISTENT), CPU_FACTS)  # 2 cores: 4 workers go, 0 is left

    assert gated.params["num_workers"].choices == (0,)
    assert gated.params["persistent_workers"].choices == (False, True)
    cfg = TrainConfig.from_base(Base(), num_workers=0, persistent_workers=True)
    assert cfg.persistent_workers is False
    assert gate(load_space("default"), CPU_FACTS).params["persistent_workers"].choices == (True,)


@pytest.mark.parametrize(
    ("params", "facts", "left"),
    [
        # A space with no amp, pin_memory or checkpointing knobs, on a CPU.
        pytest.param(_OK_PARAMS, CPU_FACTS, {"micro_batch_size": (16, 32)}, id="minimal-space"),
        # No persistent_workers knob; one core leaves only 0 workers.
        pytest.param(
            {"num_workers": {"choices": [0, 2, 4]}},
            Facts("cuda", {}, logical_cores=1, has_blocks=True, train_size=100),
            {"num_workers": (0,)},
            id="no-persistent-workers-knob",
        ),
    ],
)
def test_gate_skips_knobs_the_space_does_not_list(params, facts, left):
    gated = gate(_space(params), facts)

    assert {k: p.choices for k, p in gated.params.items()} == left
