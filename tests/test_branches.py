"""Branched runs from one point of training: the sample cost of a larger batch, measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig
from autotune.search import branches
from autotune.search.branches import Point, check, samples_to, train_step
from autotune.model.task import load_task

ASSETS = Path(__file__).parent / "assets"


def test_samples_to_interpolates_between_evaluations():
    curve = [(0, 2.0), (100, 1.5), (200, 1.0), (300, 1.2)]
    assert samples_to(curve, 1.25) == pytest.approx(150.0)
    assert samples_to(curve, 1.0) == pytest.approx(200.0)
    assert samples_to(curve, 2.0) == 0.0
    assert samples_to(curve, 0.9) is None


def test_accumulated_micro_batches_make_the_same_step_as_the_whole_batch():
    task = load_task(ASSETS / "tiny_mlp.py")
    x, y = task.datasets()[0][:32]
    models = []
    for accumulation in (1, 4):
        torch.manual_seed(0)
        model = task.build_model()
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.5), task, x, y, accumulation)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in models[1].parameters())


def _point(task, steps=5):
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = task.make_optimizer(model.parameters(), 0.01, 0.0)
    x, y = task.datasets()[0][:8]
    for _ in range(steps):
        train_step(model, optimizer, task, x, y)
    return Point.of(model, optimizer)


def test_a_check_branches_every_batch_from_the_same_point_for_the_same_samples():
    task = load_task(ASSETS / "tiny_mlp.py")
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    got = check(task, cfg, _point(task), [8, 32], steps=6, repeats=2, windows=1)
    assert got.batches == [8, 32] and got.samples == 6 * 32
    assert len(got.curves) == 2
    for curves in got.curves:
        starts = {curve[0][1] for curve in curves.values()}
        assert len(starts) == 1  # every branch starts from the point
        assert all(curve[-1][0] == 192 for curve in curves.values())
        assert len(curves[8]) > len(curves[32]) >= 3  # evaluated as it went
    ratios = got.ratios
    assert ratios is not None and ratios[32] > 0
    record = got.to_dict()
    assert record["ratios"] == {"32": ratios[32]} and record["reason"] is None


def test_a_check_whose_loss_does_not_move_says_why_and_has_no_ratio():
    task = load_task(ASSETS / "tiny_mlp.py")
    frozen = TrainConfig.from_base(task.base, micro_batch_size=8, base_lr=1e-12)
    got = check(task, frozen, _point(task), [8, 32], steps=3)
    assert got.ratios is None and "did not drop by 1%" in got.reason
    assert got.to_dict()["ratios"] is None


def test_a_check_skips_batches_larger_than_the_training_set(monkeypatch):
    task = load_task(ASSETS / "tiny_mlp.py")  # 96 training items
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    got = check(task, cfg, _point(task), [8, 128], steps=2)
    assert got.ratios is None and got.reason == "the training set is smaller than the check's large batch"
    monkeypatch.setattr(branches, "EVALS", 2)
    assert check(task, cfg, _point(task), [8, 32, 128], steps=2).batches == [8, 32]


def test_branches_from_the_initial_weights_warm_up_as_the_full_run_at_their_batch_would():
    task = load_task(ASSETS / "tiny_mlp.py")  # 96 training items, 2 epochs
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8, warmup=0.25)
    assert branches._warmup_steps(cfg, 8, 96) == 6 and branches._warmup_steps(cfg, 32, 96) == 2  # 25% of 24 and of 6
    torch.manual_seed(0)
    model = task.build_model()
    fresh = Point.of(model, task.make_optimizer(model.parameters(), cfg.lr, 0.0))
    warmed = check(task, cfg, fresh, [8, 32], steps=6, warmup=True)
    plain = check(task, cfg, fresh, [8, 32], steps=6)
    assert warmed.curves[0][8][0] == plain.curves[0][8][0]  # the same start
    assert warmed.curves[0][8][1][1] != plain.curves[0][8][1][1]  # a smaller first step


def test_a_window_without_a_real_loss_drop_is_doubled_and_the_repeats_keep_the_window(monkeypatch):
    task = load_task(ASSETS / "tiny_mlp.py")
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    monkeypatch.setattr(branches, "READABLE", 0.0)  # any drop is readable: the first window stays
    assert check(task, cfg, _point(task), [8, 32], steps=2, repeats=2).samples == 64
    monkeypatch.setattr(branches, "READABLE", 2.0)  # no drop is: every window is tried
    got = check(task, cfg, _point(task), [8, 32], steps=2, repeats=2)
    assert got.samples == 4 * 64
    assert [c[32][-1][0] for c in got.curves] == [256, 256]  # the second repeat ran the settled window
    assert got.ratios is not None  # the last window is read even where it shows a small drop
    assert check(task, cfg, _point(task), [8, 32], steps=2, windows=1).samples == 64


def test_branches_with_the_same_seed_draw_the_same_random_augmentations():
    """A model whose training data draws from numpy's global generator (as
    image_folder's augmentations do) trains the same branch twice to the same curve."""
    task = load_task(ASSETS / "tiny_mlp.py")
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    import numpy as np

    plain = task.loss

    def noisy_loss(out, y):  # a draw from numpy's generator on every step, as an augmentation makes
        return plain(out, y) * float(1 + np.random.rand())

    task.loss = noisy_loss
    evals, point = branches.eval_set(task, torch.device("cpu"), 32), _point(task)
    runs = [branches.branch(task, cfg, point, 8, 8, 64, evals, seed=3, device=torch.device("cpu"))
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_branch_leaves_the_points_optimizer_state_as_it_was():
    task = load_task(ASSETS / "tiny_mlp.py")  # an Adam-type optimizer: state that steps move in place
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    point = _point(task)
    before = {k: v.clone() for k, v in point.optimizer["state"][0].items()}
    evals = branches.eval_set(task, torch.device("cpu"), 32)
    runs = [branches.branch(task, cfg, point, 16, 8, 64, evals, seed=1, device=torch.device("cpu")) for _ in range(2)]
    assert runs[0] == runs[1]
    for k, v in point.optimizer["state"][0].items():
        torch.testing.assert_close(v, before[k])


def test_a_check_trains_each_batch_whole_as_a_full_run_does_and_accumulates_only_when_memory_runs_out(monkeypatch):
    task = load_task(ASSETS / "tiny_mlp.py")
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    seen: list[tuple[int, int]] = []
    real = branches.branch

    def spy(task, cfg, point, batch, micro, *args, **kwargs):
        seen.append((batch, micro))
        if batch == 32 and micro == 32 and fail_whole:
            raise torch.cuda.OutOfMemoryError("no room for 32")
        return real(task, cfg, point, batch, micro, *args, **kwargs)

    monkeypatch.setattr(branches, "branch", spy)
    fail_whole = False
    check(task, cfg, _point(task), [8, 32], steps=6, windows=1)
    assert seen == [(8, 8), (32, 32)]
    seen.clear()
    fail_whole = True
    assert check(task, cfg, _point(task), [8, 32], steps=6, windows=1).ratios is not None
    assert seen == [(8, 8), (32, 32), (32, 8)]


def test_a_branch_clips_the_gradient_as_the_config_does():
    task = load_task(ASSETS / "tiny_mlp.py")
    evals = branches.eval_set(task, torch.device("cpu"), 32)
    point = _point(task)
    curves = [branches.branch(task, TrainConfig.from_base(task.base, micro_batch_size=8, grad_clip=clip), point, 8, 8,
                              64, evals, seed=1, device=torch.device("cpu")) for clip in (0.0, 1e-4, 0.0)]
    assert curves[0] == curves[2] and curves[1] != curves[0]


def test_a_check_out_of_time_reads_nothing_and_says_so():
    task = load_task(ASSETS / "tiny_mlp.py")
    cfg = TrainConfig.from_base(task.base, micro_batch_size=8)
    got = check(task, cfg, _point(task), [8, 32], steps=6, repeats=2, windows=1, seconds=0.0)
    assert got.ratios is None and got.reason == "the check ran out of its 0 s before reading every repeat"
    assert check(task, cfg, _point(task), [8, 32], steps=6, repeats=2, windows=1, seconds=60.0).ratios is not None
