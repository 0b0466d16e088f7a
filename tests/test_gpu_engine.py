"""The engine on a CUDA GPU: what only a GPU can show. Peak-memory calls as a fresh
process's first CUDA call, a probe and a trial under a GPU memory limit, the CUDA random
generator through a checkpoint, fp16 with a loss scaler, the fp16 probe's optimizer
state, and weights and checkpoints that load on a machine without a GPU. Every test
here skips without CUDA; their CPU counterparts are in the other test files."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig, TunedConfig
from autotune.engine import knobs
from autotune.engine.checkpoint import FORMAT_VERSION, LAST, Checkpointer, load, rng_state, save_atomic, set_rng_state
from autotune.engine.loop import train
from autotune.model.task import load_task
from tests.training import _cfg, _weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ASSETS = Path(__file__).parent / "assets"
ROOT = Path(__file__).parents[1]
GPU = torch.device("cuda", 0)
MIB = 2**20

_FIRST_CALL = """
import sys, torch
from autotune.engine.memory import peak_memory_bytes, reset_peak_memory
gpu = torch.device("cuda", 0)
assert not torch.cuda.is_initialized()
if sys.argv[1] == "reset":
    reset_peak_memory(gpu)
first = peak_memory_bytes(gpu)
x = torch.empty(2**22, dtype=torch.uint8, device=gpu)
print(first, peak_memory_bytes(gpu))
"""


@pytest.mark.parametrize("first", ["reset", "peak"])
def test_peak_memory_calls_are_safe_as_a_fresh_processs_first_cuda_call(first):
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL, first], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0 and after >= 2**22


def test_a_probe_and_a_trial_run_under_a_gpu_memory_limit():
    from autotune.search.probe import isolated_prober
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated

    task = load_task(ASSETS / "wide_mlp.py")
    cap = 256 * MIB
    prober = isolated_prober(task, TrainConfig(), cap, headroom=0.0)
    small = prober(64)
    assert small.ok and 0 < small.peak_bytes <= cap
    assert not prober(65536).ok  # activations of GiBs: out of memory at the cap, in its own process

    def trial(limit: int):
        budget = TrialBudget(warmup_steps=1, window_s=0.02, windows=1, max_eval_batches=1, memory_limit_bytes=limit)
        kwargs = {"model_path": str(task.path), "config": TrainConfig(micro_batch_size=64).to_dict(), "budget": budget.to_dict()}
        return run_isolated(measure, kwargs, 120)

    assert trial(2**30).status == "ok"
    tight = trial(16 * MIB)  # the weights alone (19 MB) do not fit
    assert tight.status == "oom", tight.reason


def test_the_cuda_random_generator_round_trips_through_a_checkpoint(tmp_path):
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device=GPU)
    path = save_atomic({"format": FORMAT_VERSION, "rng": rng_state()}, tmp_path / "rng.pt")
    expected = torch.rand(1000, device=GPU)
    torch.rand(77, device=GPU)  # the generator moves on
    state = load(path)["rng"]
    assert len(state["cuda"]) == torch.cuda.device_count()
    set_rng_state(state)
    assert torch.equal(torch.rand(1000, device=GPU), expected)


def _with_dropout(task):
    """``task`` with dropout on its outputs: a run's result depends on the CUDA generator."""
    build = task.build_model
    task.build_model = lambda: torch.nn.Sequential(build(), torch.nn.Dropout(0.5))
    return task


def test_a_resumed_gpu_run_draws_the_dropout_masks_of_the_uninterrupted_one(tmp_path, tiny_task):
    task = _with_dropout(tiny_task)
    cfg = dataclasses.replace(_cfg(micro_batch_size=8), epochs=2)
    whole = train(task, cfg, GPU)
    kept = []
    ckpt = Checkpointer(tmp_path, every_steps=5, every_s=None)
    original = ckpt.save

    def keep(state, name=LAST):
        path = original(state, name)
        if name == LAST and state["position"]["epoch_batches"]:
            kept.append(torch.load(path, weights_only=True))  # no map_location: where the file put them
        return path

    ckpt.save = keep  # type: ignore[method-assign]
    train(task, cfg, GPU, checkpoints=ckpt)
    mid = kept[0]  # after step 5 of 24: most of the run, and its dropout masks, still to come
    # Saved as CPU tensors, so a machine without a GPU can read them too.
    assert all(t.device.type == "cpu" for t in _tensors(mid["states"]))
    resumed = train(task, cfg, GPU, resume=mid)
    assert all(p.is_cuda for p in resumed.model.parameters())  # put back on the device
    for name, w in _weights(whole).items():
        torch.testing.assert_close(_weights(resumed)[name], w, atol=1e-5, rtol=1e-5)
    # The control: another CUDA generator state gives other masks, and other weights.
    torch.cuda.manual_seed(123)
    other = {**mid, "rng": [{**mid["rng"][0], "cuda": [torch.cuda.get_rng_state()]}]}
    off = train(task, cfg, GPU, resume=other)
    assert any(not torch.allclose(_weights(off)[k], w, atol=1e-3) for k, w in _weights(whole).items())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_fp16_with_a_loss_scaler_trains_with_a_finite_loss(tiny_task):
    dtypes = set()
    build = tiny_task.build_model

    def watched():
        model = build()
        model.out.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype) if m.training else None)
        return model

    tiny_task.build_model = watched
    cfg = dataclasses.replace(_cfg(micro_batch_size=8, amp="fp16"), epochs=2)
    knobs.seed_everything(cfg.seed)  # as the run does before it builds the model
    before = build().out.weight.detach().clone()
    result = train(tiny_task, cfg, GPU)
    assert dtypes == {torch.float16}  # the forward ran under fp16 autocast
    assert result.steps == 24 and all(math.isfinite(row["train_loss"]) for row in result.history)
    assert result.skipped_steps <= 2  # a skip or two while the scale settles, not a stuck run
    assert not torch.equal(result.model.out.weight.detach().cpu(), before)  # and it trained


def test_an_fp16_probe_on_the_gpu_allocates_the_optimizer_state_when_every_gradient_overflows(tiny_task):
    from autotune.search.probe import _two_steps

    made = []
    build, make = tiny_task.build_model, tiny_task.make_optimizer

    def build_model():
        model = build()
        for p in model.parameters():
            p.register_hook(lambda g: torch.full_like(g, float("inf")))
        return model

    tiny_task.build_model = build_model
    tiny_task.make_optimizer = lambda params, lr, wd: made.append(make(params, lr, wd)) or made[-1]
    x, y = tiny_task.datasets()[0][:8]
    _two_steps(tiny_task, TrainConfig(amp="fp16"), GPU, lambda: (x, y))
    state = made[-1].state
    assert len(state) == len(made[-1].param_groups[0]["params"])
    assert all(s["exp_avg"].is_cuda for s in state.values())


_READ_WITHOUT_CUDA = """
import sys, torch
assert not torch.cuda.is_available()
def tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)
saved = torch.load(sys.argv[1], weights_only=True)
print(sorted({t.device.type for t in tensors(saved)}))
"""


def test_the_final_runs_weights_and_checkpoints_load_on_a_machine_without_a_gpu(tmp_path, tiny_model_file):
    from autotune.workflow.final import final_run

    final_run(load_task(tiny_model_file), _cfg(micro_batch_size=8), tmp_path, progress=False, log=lambda *_: None)
    for path in (tmp_path / "model.pt", tmp_path / "checkpoints" / LAST):
        done = subprocess.run([sys.executable, "-c", _READ_WITHOUT_CUDA, str(path)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['cpu']"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two ranks need two GPUs")
def test_nproc_2_on_two_gpus_trains_with_nccl(tmp_path):
    TunedConfig(train=_cfg(micro_batch_size=8, epochs=2)).save(tmp_path / "tuned.yaml")
    done = subprocess.run([sys.executable, "-m", "autotune", "train", str(ASSETS / "tiny_mlp.py"), "--config",
                           str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / "out"), "--no-progress", "--nproc", "2"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torchrun (nccl)" in done.stdout and "x 2 processes" in done.stdout
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert {t.device.type for t in weights.values()} == {"cpu"}
