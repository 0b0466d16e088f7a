"""The final run on several processes: the per-rank config, the samplers' partition, and
a real `autotune train --nproc 2` through torchrun with gloo on the CPU, compared with
a single-process run of the same effective batch, and one killed mid-epoch and resumed;
two ranks training in real processes count their collectives. CUDA is hidden from these
runs, so a machine with GPUs (one is not enough for two ranks) runs them on the CPU too."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig, TunedConfig, scaled_lr
from autotune.engine.checkpoint import LAST, Checkpointer, ResumableSampler, load
from autotune.engine.distributed import Dist, ShardSampler, leave
from autotune.workflow.final import per_rank_config
from tests.run_checks import assert_same_final_run

ASSETS = Path(__file__).parent / "assets"
GiB = 2**30
ON_THE_CPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # torchrun's ranks: gloo on the CPU, GPUs or not


def test_each_rank_keeps_the_tuned_micro_batch_and_the_lr_follows_the_larger_batch():
    cfg = TrainConfig(micro_batch_size=64, accumulation_steps=2, base_lr=0.001, base_batch_size=32, lr_rule="linear")
    same = [{"memory_total_bytes": 80 * GiB}] * 2
    got = per_rank_config(cfg, 2, [], log=lambda _: None, devices=same)
    assert got.micro_batch_size == 64
    assert got.lr == pytest.approx(0.001 * 64 * 2 * 2 / 32)
    assert per_rank_config(cfg, 2, [], log=lambda _: None).micro_batch_size == 64  # no GPU facts: as tuned


def test_mixed_gpus_size_the_micro_batch_by_the_smallest_card():
    cfg = TrainConfig(micro_batch_size=64, accumulation_steps=1, base_lr=0.001, base_batch_size=32, lr_rule="sqrt")
    logs: list[str] = []
    got = per_rank_config(cfg, 2, [], log=logs.append,
                          devices=[{"memory_total_bytes": 80 * GiB}, {"memory_total_bytes": 24 * GiB}])
    assert got.micro_batch_size == int(64 * 24 / 80)
    assert got.lr == pytest.approx(scaled_lr(0.001, 32, got.micro_batch_size * 2, "sqrt"))
    assert "micro-batch 64 -> 19 per rank" in logs[0]
    # A smaller card beyond the ones used does not matter; an unknown size ("N/A") leaves it.
    three = [{"memory_total_bytes": 80 * GiB}] * 2 + [{"memory_total_bytes": 8 * GiB}]
    assert per_rank_config(cfg, 2, [], log=logs.append, devices=three).micro_batch_size == 64
    unknown = [{"memory_total_bytes": 80 * GiB}, {"memory_total_bytes": "N/A"}]
    assert per_rank_config(cfg, 2, [], log=logs.append, devices=unknown).micro_batch_size == 64


def test_the_ranks_batches_together_are_the_single_process_batch():
    n, micro, world = 21, 4, 2
    single = list(ResumableSampler(n, torch.Generator().manual_seed(7)))
    ranks = [list(ResumableSampler(n, torch.Generator().manual_seed(7), r, world)) for r in range(world)]
    assert all(len(r) == 11 for r in ranks)  # padded to a multiple of the world size
    for i in range(0, 8, micro):  # the full batches: rank batch i, both ranks = single batch of world x micro
        together = sorted(ranks[0][i:i + micro] + ranks[1][i:i + micro])
        assert together == sorted(single[world * i: world * (i + micro)])
    shards = [list(ShardSampler(n, Dist(r, world))) for r in range(world)]
    assert sorted(shards[0] + shards[1]) == list(range(n))  # validation: every item once


def test_every_rank_trains_on_as_many_full_micro_batches():
    from torch.utils.data import TensorDataset

    from autotune.engine.data import make_loader

    items = TensorDataset(torch.arange(21), torch.arange(21))
    cfg = TrainConfig(micro_batch_size=4)
    # 11 items a rank (21 padded to 22): two micro-batches of 4 each; the 3 left over wait
    # for another epoch's order. Validation shards every item once, the short batch kept.
    for r in range(2):
        loader = make_loader(items, cfg, torch.device("cpu"), train=True, dist=Dist(r, 2))
        assert [len(x) for x, _ in loader] == [4, 4] and len(loader) == 2
    val = [make_loader(items, cfg, torch.device("cpu"), train=False, dist=Dist(r, 2)) for r in range(2)]
    assert sorted(int(i) for loader in val for x, _ in loader for i in x) == list(range(21))


@pytest.mark.slow
def test_nproc_2_on_the_cpu_trains_like_one_process_with_twice_the_micro_batch(tmp_path):
    base = dict(accumulation_steps=2, epochs=3, base_lr=0.01, base_batch_size=8, lr_rule="sqrt", warmup=0.2, seed=0,
                grad_clip=1.0, cpu_threads=1)
    per_rank = TrainConfig(micro_batch_size=8, lr=0.01, **base)
    single = TrainConfig(micro_batch_size=16, lr=scaled_lr(0.01, 8, 16 * 2, "sqrt"), **base)
    reports, logs = {}, {}
    for name, cfg, extra in (("ddp", per_rank, ["--nproc", "2"]), ("single", single, [])):
        TunedConfig(train=cfg).save(tmp_path / f"{name}.yaml")
        done = subprocess.run(
            [sys.executable, "-m", "autotune", "train", str(ASSETS / "tiny_mlp.py"), "--config", str(tmp_path / f"{name}.yaml"),
             "--out", str(tmp_path / name), "--no-progress", *extra],
            capture_output=True, text=True, timeout=300, env=ON_THE_CPU)
        assert done.returncode == 0, done.stdout + done.stderr
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
        logs[name] = done.stdout
    assert "starting 2 processes with torchrun (gloo)" in logs["ddp"]
    assert "final run on cpu x 2 processes" in logs["ddp"] and "x 2 processes" not in logs["single"]
    ddp, one = reports["ddp"]["final"], reports["single"]["final"]
    # The same samples in every optimizer step, gradients averaged over the ranks: equal up
    # to the order of float additions.
    assert [r["samples"] for r in ddp["history"]] == [r["samples"] for r in one["history"]] == [96, 96, 96]
    assert [r["train_loss"] for r in ddp["history"]] == pytest.approx([r["train_loss"] for r in one["history"]], rel=1e-5)
    assert ddp["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert ddp["val_accuracy"] == one["val_accuracy"]
    assert reports["ddp"]["evaluation"]["confusion_matrix"] == reports["single"]["evaluation"]["confusion_matrix"]
    a = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "model.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.slow
def test_nproc_2_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    # cpu_threads=1 and gloo: the same arithmetic in every run, so weights compare bit for bit.
    cfg = TrainConfig(micro_batch_size=8, accumulation_steps=2, epochs=3, lr=0.01, base_lr=0.01, warmup=0.2, seed=3,
                      cpu_threads=1)
    TunedConfig(train=cfg).save(tmp_path / "tuned.yaml")

    def train(out: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "autotune", "train", str(ASSETS / "crashy_mlp.py"), "--config",
               str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / out), "--no-progress", "--nproc", "2",
               "--checkpoint-every", "1", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**ON_THE_CPU, **(env or {})})

    whole = train("whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    # Each rank fetches 48 items an epoch; the 70th is in the second epoch, after its first
    # optimizer step there. Both ranks are killed by SIGKILL at that item.
    killed = train("killed", env={"CRASHY_MLP_KILL_AT": "70"})
    assert killed.returncode != 0
    assert "--resume goes on from the last checkpoint" in killed.stderr
    state = load(tmp_path / "killed" / "checkpoints" / LAST)
    assert state["position"]["epoch"] == 1 and state["position"]["epoch_batches"] > 0
    assert len(state["rng"]) == 2  # each rank's random state, for its own dropout
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each seeded its own way
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = train("killed", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming the final run at epoch 2, step {state['position']['steps']}" in resumed.stdout
    assert_same_final_run(tmp_path / "whole", tmp_path / "killed")  # tolerance: none
    # One process of one run alone with another world size: refused, saying why.
    alone = subprocess.run([sys.executable, "-m", "autotune", "train", str(ASSETS / "crashy_mlp.py"), "--config",
                            str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / "killed"), "--no-progress",
                            "--resume"], capture_output=True, text=True, timeout=300, env=ON_THE_CPU)
    assert alone.returncode == 1 and "written by a run of 2 process(es); this one has 1" in alone.stderr


def _rank(rank: int, folder: Path, results: "mp.Queue") -> None:
    """One of two ranks: a final run with a checkpoint every 600 s, counting the
    all-reduces the Python side asks for (DDP's gradient all-reduce is not among them)."""
    import torch.distributed as dist

    from autotune.engine.loop import train
    from autotune.model.task import load_task

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    calls: list[int] = []
    all_reduce = dist.all_reduce
    dist.all_reduce = lambda *args, **kwargs: calls.append(1) or all_reduce(*args, **kwargs)
    cfg = TrainConfig(micro_batch_size=2, epochs=5, lr=0.01, base_lr=0.01, seed=0, cpu_threads=1)
    ckpt = Checkpointer(folder / "checkpoints", every_s=600.0, enabled=rank == 0)
    result = train(load_task(ASSETS / "tiny_mlp.py"), cfg, torch.device("cpu"), checkpoints=ckpt, dist=Dist(rank, 2))
    results.put((rank, result.steps, len(calls)))
    leave(finished=True)


@pytest.mark.slow
def test_two_ranks_agree_on_time_checkpoints_without_a_collective_every_step(tmp_path):
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, tmp_path, results)) for rank in range(2)]
    for p in ranks:
        p.start()
    got = sorted(results.get(timeout=240) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert [p.exitcode for p in ranks] == [0, 0]
    steps = 5 * 96 // 2 // 2  # 5 epochs of 24 steps on each rank's 48 items
    assert [s for _, s, _ in got] == [steps, steps]
    # Per epoch one loss sum, at the end the evaluation's and the sample count's, and a few
    # comparisons of the ranks' clocks: nothing like one every step.
    assert all(0 < calls < steps / 4 for _, _, calls in got), got
    assert load(tmp_path / "checkpoints" / LAST)["position"]["epoch"] == 5
