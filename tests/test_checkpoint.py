"""Checkpoints of the final run, resume, and time-to-target: real training on tiny models,
and a real process killed mid-epoch by SIGKILL and resumed through the CLI. All on the
CPU (a GPU machine's too), where a resumed run is identical bit for bit; the GPU's own
checks are in tests/test_gpu_engine.py."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig, TunedConfig
from autotune.engine import checkpoint
from autotune.engine.checkpoint import BEST, LAST, Checkpointer, ResumableSampler, load, save_atomic, to_cpu
from autotune.engine.loop import train
from autotune.errors import AutotuneError
from autotune.model.task import load_task
from tests.run_checks import assert_same_final_run
from tests.training import CPU, _weights

ASSETS = Path(__file__).parent / "assets"
CRASHY = ASSETS / "crashy_mlp.py"
# cpu_threads=1: the same arithmetic in every process, so results can be compared bit for bit.
CFG = TrainConfig(micro_batch_size=8, accumulation_steps=2, epochs=3, lr=0.01, base_lr=0.01, warmup=0.2, seed=3, cpu_threads=1)


def test_the_sampler_draws_the_whole_order_and_skips_only_in_the_next_epoch():
    a = ResumableSampler(10, torch.Generator().manual_seed(5))
    b = ResumableSampler(10, torch.Generator().manual_seed(5))
    first = list(a)
    b.skip(4)
    assert list(b) == first[4:]  # the same order, less what was consumed
    assert list(a) == list(b)  # and the next epochs agree again
    assert sorted(first) == list(range(10))


class _Clock:
    """A clock the test moves, standing in for ``checkpoint``'s ``time`` module."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_step_checkpoints_are_decided_alike_on_every_rank_with_no_agreement(tmp_path):
    ckpt = Checkpointer(tmp_path, every_steps=5, every_s=None, enabled=False)
    asked, saved = [], []
    for step in range(1, 21):
        if ckpt.decide(step, lambda flag, step_s: asked.append(step) or (flag, step_s)):
            saved.append(step)
            ckpt.save({"position": {"steps": step}})
    assert saved == [5, 10, 15, 20] and asked == []  # a step count is the same on every rank


def test_time_checkpoints_compare_the_ranks_clocks_only_every_so_many_steps(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(checkpoint, "time", clock)
    ckpt = Checkpointer(tmp_path, every_s=60.0, enabled=False)
    polls, saved = [], []

    def agree(flag: bool, step_s: float) -> tuple[bool, float]:
        # Two ranks: the other's clock is 0.5 s ahead, its steps 3 times as long.
        polls.append(step_s)
        other = clock.now + 0.5 - ckpt._last_time >= ckpt.every_s
        return flag or other, (step_s + 3 * step_s) / 2

    step_s, steps = 0.001, 150_000  # 150 s of 1 ms steps
    for step in range(1, steps + 1):
        clock.now += step_s
        if ckpt.decide(step, agree):
            saved.append(step)
            ckpt.save({"position": {"steps": step}})
    # After the first two comparisons, one every 0.05 x 60 s at the ranks' mean step of
    # 2 ms: every 1500 steps, where a collective every step cost 150000.
    assert polls[0] == 0.0 and polls[1] == pytest.approx(step_s)
    assert len(polls) == pytest.approx(steps / 1500, abs=3)
    # Due on the other rank 0.5 s (500 steps) early, taken at the next comparison: at most
    # 1500 steps (3% of the interval here) late, never early by more than the clocks differ.
    assert len(saved) == 2
    assert all(59_500 <= gap <= 61_500 for gap in (saved[0], saved[1] - saved[0]))


def test_to_cpu_keeps_a_state_dicts_structure_and_what_it_loads_into(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    weights, state = to_cpu(model.state_dict()), to_cpu(optimizer.state_dict())
    assert type(weights) is type(model.state_dict()) and list(weights) == list(model.state_dict())
    assert state["param_groups"] == optimizer.state_dict()["param_groups"]
    assert all(t.device.type == "cpu" for t in [*weights.values(), *state["state"][0].values()])
    nested = to_cpu({"a": [torch.ones(2), (torch.zeros(1), 3)], "b": "text", "c": None})
    assert nested["a"][1][1] == 3 and isinstance(nested["a"][1], tuple) and nested["b"] == "text"
    # Through a file as a checkpoint goes, the modules' versions (read by load_state_dict) too.
    saved = torch.load(save_atomic({"w": weights, "o": state}, tmp_path / "s.pt"), weights_only=True)
    weights, state = saved["w"], saved["o"]
    assert weights._metadata == model.state_dict()._metadata
    # A fresh model and optimizer loaded from them go on exactly as the originals do.
    torch.manual_seed(1)
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=0.1)
    twin.load_state_dict(weights)
    twin_optimizer.load_state_dict(state)
    x = torch.randn(8, 3)
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        m(x).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_checkpoints_are_written_atomically_and_read_back(tmp_path):
    path = save_atomic({"format": 1, "x": torch.arange(3)}, tmp_path / "c" / LAST)
    assert torch.equal(load(path)["x"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == [LAST]  # no temporary file left
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AutotuneError, match=r"Cannot read the checkpoint .*junk.pt"):
        load(tmp_path / "junk.pt")
    save_atomic({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(AutotuneError, match="is not a checkpoint this version of autotune wrote"):
        load(tmp_path / "other.pt")


def test_resuming_from_a_mid_epoch_checkpoint_in_process_gives_the_same_weights(tmp_path):
    task = load_task(CRASHY)
    whole = train(task, CFG, CPU, eval_each_epoch=True)
    # 6 steps an epoch; a checkpoint 4 steps after the last one, and at every epoch's end:
    # mid-epoch at steps 4, 10 and 16 (the 4th step of epoch 3). Resume from the last.
    saved = []
    ckpt = Checkpointer(tmp_path / "c", every_steps=4, every_s=None)
    original = ckpt.save

    def keep(state, name=LAST):
        saved.append((name, state["position"]["steps"], torch.load(original(state, name), weights_only=False)))
        return tmp_path

    ckpt.save = keep  # type: ignore[method-assign]
    first = train(task, CFG, CPU, eval_each_epoch=True, checkpoints=ckpt)
    mid = [s for name, steps, s in saved if name == LAST and s["position"]["epoch_batches"]]
    assert [s["position"]["steps"] for s in mid] == [4, 10, 16]
    resumed = train(task, CFG, CPU, eval_each_epoch=True, resume=mid[-1])
    assert resumed.resumed_at == {"epoch": 2, "epoch_batches": 8, "steps": 16}
    for name, value in _weights(whole).items():
        assert torch.equal(value, _weights(resumed)[name]), name
        assert torch.equal(value, _weights(first)[name]), name
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert resumed.evaluation.loss == whole.evaluation.loss


def test_resume_refuses_another_config(tmp_path):
    task = load_task(CRASHY)
    ckpt = Checkpointer(tmp_path, every_steps=None, every_s=None)
    train(task, CFG, CPU, checkpoints=ckpt)
    state = ckpt.load(LAST)
    assert state["position"]["epoch"] == 3
    with pytest.raises(AutotuneError, match=r"another config \(epochs: 3 then, 4 now\)"):
        train(task, dataclasses.replace(CFG, epochs=4), CPU, resume=state)


def test_best_checkpoint_follows_the_validation_score_and_time_to_target_the_first_epoch_reaching_it(tmp_path):
    task = load_task(CRASHY)
    ckpt = Checkpointer(tmp_path, every_steps=None, every_s=None)
    target = 0.5
    result = train(task, CFG, CPU, eval_each_epoch=True, checkpoints=ckpt, target_accuracy=target)
    accuracies = [r["val_accuracy"] for r in result.history]
    best_epoch = accuracies.index(max(accuracies)) + 1
    assert load(tmp_path / BEST)["position"]["epoch"] == best_epoch
    reached = [i + 1 for i, a in enumerate(accuracies) if a >= target]
    assert result.target_epoch == (reached[0] if reached else None)
    if reached:  # the run's clock when that epoch's evaluation ended
        assert result.time_to_target_s == result.history[reached[0] - 1]["elapsed_s"]
    never = train(task, CFG, CPU, eval_each_epoch=True, target_accuracy=1.0 + 1e-9)
    assert (never.time_to_target_s, never.target_epoch) == (None, None)


def _cli(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``autotune train`` on the CPU (CUDA hidden), where a resumed run is identical."""
    cmd = [sys.executable, "-m", "autotune", "train", str(CRASHY), "--config", str(out.parent / "tuned.yaml"),
           "--out", str(out), "--no-progress", "--checkpoint-every", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})})


@pytest.mark.slow
def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    TunedConfig(train=CFG, provenance={"note": "written by a test"}).save(tmp_path / "tuned.yaml")
    whole = _cli(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    # The 140th item fetched is in the second epoch (96 items an epoch): SIGKILL there.
    killed = _cli(tmp_path / "killed", env={"CRASHY_MLP_KILL_AT": "140"})
    assert killed.returncode == -signal.SIGKILL
    position = load(tmp_path / "killed" / "checkpoints" / LAST)["position"]
    assert position["epoch"] == 1 and position["epoch_batches"] > 0  # stopped mid-epoch
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = _cli(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the final run at epoch 2, step {position['steps']}" in resumed.stdout
    assert_same_final_run(tmp_path / "whole", tmp_path / "killed")  # tolerance: none


def test_resume_without_a_checkpoint_says_so(tmp_path):
    TunedConfig(train=CFG).save(tmp_path / "tuned.yaml")
    done = _cli(tmp_path / "fresh", "--resume")
    assert done.returncode == 1
    assert "--resume: there is no checkpoint to resume from in" in done.stderr


class _RunsCode:
    """An object whose unpickling would run a command: what weights_only=True refuses."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "payload": _RunsCode(marker)}, path)
    with pytest.raises(AutotuneError, match="Cannot read the checkpoint"):
        load(path)
    assert not marker.exists()


def test_an_existing_tuned_yaml_with_another_config_is_kept_aside(tmp_path):
    from autotune.config import load_tuned
    from autotune.workflow.pipeline import _keep_previous

    logs: list[str] = []
    path = tmp_path / "tuned.yaml"
    first = TunedConfig(train=TrainConfig(micro_batch_size=16))
    assert _keep_previous(path, first, logs.append) is None  # nothing there yet
    first.save(path)
    assert _keep_previous(path, first, logs.append) is None and path.exists()  # same config: rewritten
    assert "holds the same config" in logs[-1]
    kept = _keep_previous(path, TunedConfig(train=TrainConfig(micro_batch_size=64)), logs.append)
    assert kept is not None and kept.name.startswith("tuned.previous-") and not path.exists()
    assert load_tuned(kept).train == first.train
    assert str(kept) in logs[-1]


def test_by_default_the_final_run_checkpoints_every_ten_minutes_within_an_epoch(tiny_task, tmp_path, monkeypatch):
    from autotune.workflow.final import FinalOptions, final_run

    # The checkpointer's clock moves 100 s at each look: ten minutes pass within the
    # epoch, and a checkpoint mid-epoch says the default (600 s) is in force.
    clock = _Clock()

    def ticking() -> float:
        clock.now += 100.0
        return clock.now

    clock.perf_counter = ticking  # type: ignore[method-assign]
    monkeypatch.setattr(checkpoint, "time", clock)
    saved: list[tuple[str, int, int]] = []
    original = Checkpointer.save

    def spy(self, state, name=LAST):
        saved.append((name, state["position"]["epoch"], state["position"]["steps"]))
        return original(self, state, name)

    monkeypatch.setattr(Checkpointer, "save", spy)
    assert FinalOptions().checkpoint_every_steps is None and FinalOptions().checkpoint_every_s == 600.0
    cfg = TrainConfig(micro_batch_size=4, epochs=1, lr=0.01, base_lr=0.01)
    result = final_run(tiny_task, cfg, tmp_path, progress=False, log=lambda _: None)
    last = [steps for name, _, steps in saved if name == LAST]
    assert len(last) >= 2 and 0 < last[0] < result.steps  # one within the epoch, then the epoch's end
    assert (tmp_path / "checkpoints" / LAST).is_file()
