"""The GPU knobs (fp32 precision, the optimizer's implementation, compile modes, the
allocator's expandable segments): their settings, their round trip through configs, and
what a trial does with them. The settings are torch's global flags and an environment
variable, which exist on a CPU build too, so most of this runs without a GPU; the tests
that need one skip without it."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from autotune.config import TrainConfig, TunedConfig, load_tuned
from autotune.engine import knobs
from autotune.engine.flops import peak_key
from autotune.engine.loop import train
from autotune.search.objective import Scorer
from autotune.search.trial import TrialBudget, cold_compile_cache
from tests.training import CPU, _cfg, _weights

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------- configs


def test_compile_written_as_a_switch_reads_as_a_mode(tmp_path):
    assert TrainConfig(compile=True).compile == "default" and TrainConfig(compile=False).compile == "off"
    TunedConfig(train=TrainConfig(compile="reduce-overhead", fp32_precision="tf32", optimizer_impl="fused",
                                  expandable_segments=True)).save(tmp_path / "tuned.yaml")
    back = load_tuned(tmp_path / "tuned.yaml").train
    assert (back.compile, back.fp32_precision, back.optimizer_impl, back.expandable_segments) == (
        "reduce-overhead", "tf32", "fused", True)
    old = (tmp_path / "tuned.yaml").read_text().replace("compile: reduce-overhead", "compile: true")
    (tmp_path / "old.yaml").write_text(old)
    assert load_tuned(tmp_path / "old.yaml").train.compile == "default"


@pytest.mark.parametrize(("train", "message"), [
    ({"compile": "max-autotune"},
     "t.yaml: train: `compile` must be one of off, default, max-autotune-no-cudagraphs, reduce-overhead, but got "
     "'max-autotune'."),
    ({"fp32_precision": "high"}, "t.yaml: train: `fp32_precision` must be one of ieee, tf32, but got 'high'."),
    ({"optimizer_impl": True}, "t.yaml: train: `optimizer_impl` must be a string, but got True."),
    ({"expandable_segments": "yes"}, "t.yaml: train: `expandable_segments` must be true or false, but got 'yes'."),
])
def test_a_bad_gpu_knob_in_tuned_yaml_is_named(train, message):
    from autotune.errors import ConfigError
    from tests.spaces import _whole

    with pytest.raises(ConfigError, match=_whole(message)):
        TrainConfig.from_dict(train, source="t.yaml: train")


def test_the_untuned_defaults_leave_the_gpu_as_torch_and_true_fp32_have_it():
    cfg = TrainConfig()
    assert (cfg.compile, cfg.fp32_precision, cfg.optimizer_impl, cfg.expandable_segments) == (
        "off", "ieee", "auto", False)


# ---------------------------------------------------------------- fp32 precision


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_fp32_precision_sets_matmuls_and_convolutions_and_restores_them(precision):
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with knobs.fp32_precision("cuda", precision):
        assert (matmul.fp32_precision, conv.fp32_precision) == (precision, precision)
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with knobs.fp32_precision("cpu", "tf32"):  # nothing to set without a GPU
        assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_mfu_is_against_the_peak_the_config_computes_at():
    assert [peak_key("off"), peak_key("off", "tf32"), peak_key("bf16", "tf32"), peak_key("fp16")] == [
        "off", "tf32", "bf16", "fp16"]
    measured = {"cuda_matmul_fp32_tflops": 50.0, "cuda_matmul_tf32_tflops": 400.0, "cuda_matmul_bf16_tflops": 800.0}
    scorer = Scorer.build("throughput", 32, {"flops_per_sample": 1e9}, measured, "cuda")
    tps = {"throughput_samples_per_s": 40_000.0}  # 40 TFLOP/s of model work
    assert scorer.score(TrainConfig(), tps)["mfu"] == pytest.approx(0.8)
    assert scorer.score(TrainConfig(fp32_precision="tf32"), tps)["mfu"] == pytest.approx(0.1)
    assert scorer.score(TrainConfig(amp="bf16"), tps)["mfu"] == pytest.approx(0.05)


# ---------------------------------------------------------------- optimizer implementation


def test_optimizer_impls_are_those_the_optimizer_takes():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert knobs.optimizer_impls(torch.optim.AdamW(params)) == ("auto", "plain", "foreach", "fused")
    assert knobs.optimizer_impls(torch.optim.LBFGS(params)) == ("auto",)
    with pytest.raises(ValueError, match=r"^LBFGS has no 'fused' implementation \(it offers: auto\)$"):
        knobs.set_optimizer_impl(torch.optim.LBFGS(params), "fused")


@pytest.mark.parametrize(("impl", "flags"), [("plain", (False, False)), ("foreach", (True, False)),
                                             ("fused", (False, True))])
def test_set_optimizer_impl_switches_every_group(impl, flags):
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = knobs.set_optimizer_impl(torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.1}]), impl)
    assert [(g["foreach"], g["fused"]) for g in opt.param_groups] == [flags, flags]


def test_a_fused_run_steps_with_the_fused_kernel_and_learns_what_the_plain_one_does(tiny_task, monkeypatch):
    # torch's AdamW has a fused kernel on the CPU as well: the knob's path runs for real here.
    calls = []
    fused = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1) or fused(*a, **k))
    plain = train(tiny_task, _cfg(micro_batch_size=16, optimizer_impl="plain"), CPU)
    assert calls == []
    one = train(tiny_task, _cfg(micro_batch_size=16, optimizer_impl="fused"), CPU)
    assert len(calls) == one.steps == plain.steps > 0
    for name, w in _weights(plain).items():
        torch.testing.assert_close(_weights(one)[name], w, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- allocator


@pytest.mark.parametrize(("current", "expected"), [
    (None, "expandable_segments:True"),
    ("max_split_size_mb:128", "max_split_size_mb:128,expandable_segments:True"),
    ("expandable_segments:False,garbage_collection_threshold:0.6", "garbage_collection_threshold:0.6,expandable_segments:True"),
])
def test_alloc_conf_keeps_the_users_other_settings(current, expected):
    assert knobs.alloc_conf(current, True) == expected


def test_expandable_segments_go_into_the_environment_before_cuda_starts(monkeypatch):
    # As in a fresh trial process, whatever GPU tests ran before this one in this process
    # (the branch after CUDA started is the next test's, in a subprocess).
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for var in knobs.ALLOC_CONF_VARS:
        monkeypatch.delenv(var, raising=False)
    with knobs.expandable_segments("cuda", True):
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    # The user's variable (torch 2.9+'s name here) is the one extended, and put back after.
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:64")
    with knobs.expandable_segments("cuda", True):
        assert os.environ["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:64,expandable_segments:True"
        assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    assert os.environ["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:64"
    with knobs.expandable_segments("cpu", True), knobs.expandable_segments("cuda", False):
        assert os.environ["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:64"


# ---------------------------------------------------------------- compile


def test_compile_modes_and_their_step_markers():
    model = torch.nn.Linear(2, 2)
    assert knobs.compiled(model, "off") is model
    assert knobs.step_marker("reduce-overhead") is torch.compiler.cudagraph_mark_step_begin
    knobs.step_marker("default")()  # does nothing, and is callable
    for mode in ("default", "max-autotune-no-cudagraphs", "reduce-overhead"):
        assert knobs.compiled(model, mode)._orig_mod is model  # compiled lazily, at the first call


def test_a_compiled_config_gets_more_time_before_its_process_is_killed():
    budget = TrialBudget(timeout_s=120.0, compile_timeout_s=300.0)
    assert budget.timeout_for(TrainConfig()) == 120.0
    assert budget.timeout_for(TrainConfig(compile="max-autotune-no-cudagraphs")) == 420.0


def test_a_compiled_trial_compiles_into_a_fresh_cache_that_is_removed_after(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/warm")
    with cold_compile_cache(True):
        folder = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert folder != "/somewhere/warm" and os.listdir(folder) == []
        assert os.environ["TRITON_CACHE_DIR"] == os.path.join(folder, "triton")
    assert not os.path.exists(folder)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/warm" and "TRITON_CACHE_DIR" not in os.environ
    with cold_compile_cache(False):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/warm"


def test_the_compile_clock_knows_the_first_steps_time():
    clock = knobs.CompileClock(lambda: None, enabled=True)
    assert clock.first_step_s == 0.0
    clock.times = [12.0, 0.1, 0.1, 0.1]
    assert clock.first_step_s == 12.0 and clock.seconds == pytest.approx(11.9)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_trials_time_limit_counts_from_after_the_compile(tiny_task, monkeypatch):
    # A first step that takes 1.5 s stands for the compile (a real one takes from under a
    # second on a fast host with a warm cache to minutes): counted from the start, the run
    # would stop after that first step.
    def slow_first_call(model, mode):
        calls = []

        def first_call_waits(module, args):
            if not calls:
                calls.append(1)
                time.sleep(1.5)

        model.register_forward_pre_hook(first_call_waits)
        return model

    monkeypatch.setattr(knobs, "compiled", slow_first_call)
    result = train(tiny_task, _cfg(micro_batch_size=8, epochs=100_000, compile="default"), CPU, max_seconds=1.0,
                   max_steps=10_000)
    assert result.stopped_by == "max_seconds" and result.compile_seconds > 1.0
    assert result.steps > 5 and math.isfinite(result.train_loss)


# ---------------------------------------------------------------- on a GPU


@needs_gpu
@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs", "reduce-overhead"])
def test_each_compile_mode_trains_on_the_gpu(tiny_task, mode):
    result = train(tiny_task, _cfg(micro_batch_size=16, epochs=3, compile=mode), torch.device("cuda", 0))
    assert result.steps > 3 and math.isfinite(result.train_loss) and result.compile_seconds > 0


@needs_gpu
def test_tf32_and_fused_adamw_hold_during_a_gpu_run(tiny_task):
    seen = []
    model_fn = tiny_task.build_model

    def build():
        model = model_fn()
        model.register_forward_pre_hook(lambda *a: seen.append(torch.backends.cuda.matmul.fp32_precision))
        return model

    tiny_task.build_model = build
    before = torch.backends.cuda.matmul.fp32_precision
    cfg = _cfg(micro_batch_size=16, fp32_precision="tf32", optimizer_impl="fused", expandable_segments=True)
    result = train(tiny_task, cfg, torch.device("cuda", 0))
    assert set(seen) == {"tf32"} and math.isfinite(result.train_loss)
    assert torch.backends.cuda.matmul.fp32_precision == before


@needs_gpu
def test_expandable_segments_reach_the_allocator_when_torch_was_imported_before(tiny_model_file):
    # As in a trial process: torch imported (the fork server's preload) before the run
    # sets the allocator's variable; CUDA then starts inside the run.
    import subprocess
    import sys

    code = (
        "import torch, sys\n"
        "from autotune.engine.loop import train\n"
        "from autotune.model.task import load_task\n"
        "from tests.training import _cfg\n"
        "task = load_task(sys.argv[1])\n"
        "train(task, _cfg(micro_batch_size=16, expandable_segments=True), torch.device('cuda', 0))\n"
        "segments = torch.cuda.memory_snapshot()\n"
        "print(bool(segments) and all(s.get('is_expandable') for s in segments))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in knobs.ALLOC_CONF_VARS}
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_file)], capture_output=True, text=True,
                         env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]
