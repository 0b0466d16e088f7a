"""Scoring trials: goodput from the gradient noise scale, MFU from counted FLOPs, and the
model statistics measured once per study."""

from __future__ import annotations

import math

from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.flops import mfu, peak_tflops, train_step_flops
from autotune.errors import ConfigError
from autotune.search.objective import Scorer, decide_noise_scale, fitted_noise_scale, predicted_ratio
from autotune.search.trial import start_seconds

ASSETS = Path(__file__).parent / "assets"


def test_train_step_flops_counts_forward_and_backward_matmuls():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20, bias=False), torch.nn.ReLU(), torch.nn.Linear(20, 5, bias=False))
    x = torch.randn(8, 10)
    flops = train_step_flops(model, lambda m: m(x).sum())
    # forward 2*B*(10*20 + 20*5); backward: weight grads of both layers, plus the input
    # grad of the second layer only (the first layer's input needs no grad).
    forward = 2 * 8 * (10 * 20 + 20 * 5)
    assert flops == forward + 2 * 8 * (10 * 20 + 20 * 5) + 2 * 8 * 20 * 5
    assert all(p.grad is None for p in model.parameters())


def test_peak_and_mfu_read_the_profile_for_the_configs_dtype():
    measured = {"cpu_matmul_fp32_tflops": 0.2, "cpu_matmul_bf16_tflops": 0.4, "cuda_matmul_fp16_tflops": 600.0}
    assert peak_tflops(measured, "cpu", "off") == 0.2
    assert peak_tflops(measured, "cpu", "bf16") == 0.4
    assert peak_tflops(measured, "cpu", "fp16") is None
    assert peak_tflops(measured, "cuda", "fp16") == 600.0
    assert mfu(1000.0, 1e8, 0.2) == pytest.approx(0.5)
    assert mfu(None, 1e8, 0.2) is None and mfu(1000.0, 1e8, None) is None


def test_goodput_weighs_throughput_by_the_efficiency_of_the_effective_batch():
    scorer = Scorer("goodput", reference_batch=32, b_noise=96.0, flops_per_sample=1e8, peak_tflops={"off": 0.2})
    ref = TrainConfig(micro_batch_size=32)
    big = TrainConfig(micro_batch_size=128, accumulation_steps=2)  # effective 256
    assert scorer.score(ref, {"throughput_samples_per_s": 1000.0})["goodput_samples_per_s"] == pytest.approx(1000.0)
    # (1 + 32/96) / (1 + 256/96) = (4/3) / (11/3) = 4/11
    scores = scorer.score(big, {"throughput_samples_per_s": 2200.0})
    assert scores["statistical_efficiency"] == pytest.approx(4 / 11)
    assert scores["goodput_samples_per_s"] == pytest.approx(800.0)
    assert scores["mfu"] == pytest.approx(2200 * 1e8 / 0.2e12)
    # goodput ranks the reference batch first, throughput the big one
    assert scorer.value(ref, {"throughput_samples_per_s": 1000.0}) > scorer.value(big, {"throughput_samples_per_s": 2200.0})
    raw = Scorer("throughput", reference_batch=32, b_noise=96.0)
    assert raw.value(ref, {"throughput_samples_per_s": 1000.0}) < raw.value(big, {"throughput_samples_per_s": 2200.0})


def test_without_a_noise_scale_goodput_is_throughput():
    scorer = Scorer("goodput", reference_batch=32, b_noise=None)
    cfg = TrainConfig(micro_batch_size=512)
    assert scorer.value(cfg, {"throughput_samples_per_s": 1234.0}) == 1234.0


def test_compile_time_is_spread_over_the_final_runs_samples():
    scorer = Scorer("goodput", reference_batch=32, b_noise=96.0, flops_per_sample=1e8, peak_tflops={"off": 0.2})
    cfg = TrainConfig(micro_batch_size=32, compile=True)
    measured = {"throughput_samples_per_s": 2000.0, "compile_seconds": 10.0, "run_samples": 20_000}
    # 20,000 samples take 10 s at 2,000/s, plus 10 s of compiling: 1,000 samples/s over the run.
    scores = scorer.score(cfg, measured)
    assert scores["effective_throughput_samples_per_s"] == pytest.approx(1000.0)
    assert scores["goodput_samples_per_s"] == pytest.approx(1000.0)  # the reference batch: efficiency 1
    assert scores["mfu"] == pytest.approx(2000 * 1e8 / 0.2e12)  # MFU is of the steady-state steps
    assert scorer.value(cfg, measured) == pytest.approx(1000.0)
    raw = Scorer("throughput")
    assert raw.value(cfg, measured) == pytest.approx(1000.0)
    # a run 10x longer spreads the same compile time thinner: 200,000 / (100 + 10) s
    assert raw.value(cfg, {**measured, "run_samples": 200_000}) == pytest.approx(200_000 / 110)
    # nothing compiled, or no run size known: the measured throughput as it is
    for partial in ({}, {"compile_seconds": 0.0, "run_samples": 20_000}, {"compile_seconds": 10.0}):
        m = {"throughput_samples_per_s": 2000.0, **partial}
        assert raw.value(cfg, m) == 2000.0
        assert scorer.score(cfg, m)["effective_throughput_samples_per_s"] == 2000.0
    assert raw.value(cfg, {"compile_seconds": 10.0, "run_samples": 20_000}) is None
    assert scorer.score(cfg, {})["goodput_samples_per_s"] is None


def test_loader_starts_are_spread_over_the_run_like_compile_time():
    raw = Scorer("throughput")
    cfg = TrainConfig(micro_batch_size=32, num_workers=2, persistent_workers=True, epochs=10)
    measured = {"throughput_samples_per_s": 2000.0, "run_samples": 20_000, "start_seconds": 5.0}
    assert raw.value(cfg, measured) == pytest.approx(20_000 / (10 + 5))
    both = {**measured, "compile_seconds": 5.0}
    assert raw.value(cfg, both) == pytest.approx(20_000 / (10 + 10))


def test_start_seconds_follow_how_often_the_full_run_starts_its_workers():
    # The trial: its first fetch (workers starting) 0.4 s, two later epoch starts 0.05 s each.
    ledger = {"first_fetch": 0.4, "epoch_start": 0.5, "epochs_started": 3}
    persistent = TrainConfig(num_workers=2, persistent_workers=True, epochs=10)
    # Training and validation loaders start once; 9 later epochs wait for first batches.
    assert start_seconds(persistent, ledger) == pytest.approx(2 * 0.4 + 9 * 0.05)
    restarted = TrainConfig(num_workers=2, persistent_workers=False, epochs=10)
    assert start_seconds(restarted, ledger) == pytest.approx(2 * 10 * 0.4)
    assert start_seconds(TrainConfig(num_workers=0, epochs=10), ledger) == 0.0  # loading is in the windows
    one_epoch_trial = {"first_fetch": 0.4, "epoch_start": 0.4, "epochs_started": 1}
    assert start_seconds(persistent, one_epoch_trial) == pytest.approx(0.8)
    assert start_seconds(persistent, {}) == 0.0  # a trial that never fetched


def test_scorer_round_trips_and_rejects_unknown_objectives():
    scorer = Scorer("goodput", 16, 120.5, 3e6, {"off": 0.2, "bf16": None, "fp16": None})
    assert Scorer.from_dict(scorer.to_dict()) == scorer
    with pytest.raises(ConfigError, match="Unknown objective 'speed'; choose one of: goodput, throughput"):
        Scorer("speed")


def _noise(estimate=100.0, ratios=None, per_repeat=None, reason=None, check=True):
    record = {"estimate": estimate, "low": 80.0, "high": 125.0}
    record["check"] = ({"batches": [32, 128], "ratios": ratios, "per_repeat": per_repeat, "reason": reason}
                       if check else None)
    return record


def test_the_noise_scale_is_fitted_to_the_measured_sample_ratio():
    # (1 + 128/B) / (1 + 32/B) = 1.5  =>  B = 32 (4 - 1.5) / 0.5 = 160
    assert fitted_noise_scale(1.5, 32, 128) == pytest.approx(160.0)
    assert predicted_ratio(fitted_noise_scale(1.5, 32, 128), 32, 128) == pytest.approx(1.5)
    assert fitted_noise_scale(1.0, 32, 128) == math.inf  # no extra samples: no penalty
    assert fitted_noise_scale(4.0, 32, 128) == pytest.approx(0.32)  # no gain per sample at all


def test_goodput_uses_the_noise_scale_the_branches_measured():
    used, basis = decide_noise_scale(_noise(ratios={"128": 1.5}, per_repeat=[1.45, 1.5, 1.9]))
    assert used == pytest.approx(160.0)
    assert "needed 1.50x the samples at batch 128 as at batch 32" in basis and "repeats 1.45x, 1.50x, 1.90x" in basis
    assert "noise scale 160 fitted" in basis and "per-example estimate was 100" in basis
    scorer = Scorer.build("goodput", 32, {"noise": _noise(ratios={"128": 1.5}, per_repeat=[1.45, 1.55]),
                                          "flops_per_sample": 1.0}, {}, "cpu")
    # at 4x the reference batch a sample is worth 1 / 1.5 of one at the reference batch
    assert scorer.value(TrainConfig(micro_batch_size=128), {"throughput_samples_per_s": 300.0}) == pytest.approx(200.0)


@pytest.mark.parametrize("noise, says", [
    (None, "no branched check ran"),
    (_noise(check=False), "no branched check ran"),
    (_noise(ratios=None, reason="the loss did not drop"), "could not read a loss drop (the loss did not drop)"),
    (_noise(ratios={"128": 1.5}, per_repeat=[1.1, 1.5, 1.6]), "a repeat is more than 1.3x from their median"),
    (_noise(ratios={"128": 0.95}, per_repeat=[0.95, 0.96]), "no extra cost"),
])
def test_goodput_falls_back_to_throughput_when_the_measurement_cannot_say(noise, says):
    used, basis = decide_noise_scale(noise)
    assert used is None and says in basis and "goodput equals throughput" in basis
    scorer = Scorer.build("goodput", 32, {"noise": noise, "flops_per_sample": 1.0}, {}, "cpu")
    assert scorer.b_noise is None and scorer.basis == basis
    cfg = TrainConfig(micro_batch_size=256)
    assert scorer.value(cfg, {"throughput_samples_per_s": 500.0}) == 500.0


@pytest.mark.slow
def test_model_stats_measure_flops_and_a_noise_scale_in_a_fresh_process():
    from autotune.search.model_stats import measure_isolated
    from autotune.model.task import load_task

    task = load_task(ASSETS / "tiny_mlp.py")
    stats = measure_isolated(task)
    model = task.build_model()
    x, y = task.datasets()[0][0]
    expected = train_step_flops(model, lambda m: task.loss(m(x.unsqueeze(0)), torch.tensor([y])))
    assert stats["flops_per_sample"] == pytest.approx(expected)
    noise = stats["noise"]
    assert noise["method"] == "per-example" and noise["preconditioned"]  # an MLP trained with AdamW
    assert noise["observations"] >= 2 and noise["steps_before"] >= 1
    assert noise["estimate"] is None or noise["estimate"] > 0
    assert len(noise["blocks"]) == min(5, noise["observations"])
    check = noise["check"]
    assert check["batches"] == [noise["batch"], 4 * noise["batch"]] and len(check["per_repeat"]) == 3
    assert check["ratios"] is not None or check["reason"]


def test_a_pick_at_another_batch_must_beat_the_default_even_if_its_samples_cost_the_margin_more():
    from autotune.search.objective import LEAVE_MARGIN
    from autotune.search.race import Candidate
    from autotune.search.select import at_reference

    scorer = Scorer("goodput", reference_batch=32, b_noise=200.0)
    assert scorer.lead_needed(32) == 1.0
    assert scorer.lead_needed(64) == scorer.lead_needed(16) == pytest.approx(1 + LEAVE_MARGIN)

    def run(number, micro, accumulation, level):
        return Candidate(number, TrainConfig(micro_batch_size=micro, accumulation_steps=accumulation), {},
                         values=[level], level=level)

    default, bf16 = run(None, 32, 1, 100.0), run(4, 32, 1, 110.0)
    # Effective batch 64 (32 x 2: the effective batch counts, not the micro-batch) leads the
    # default by 1.25x, under 1.3x: the best safe run, at the reference batch, is picked.
    wide = run(7, 32, 2, 125.0)
    picked, kept = at_reference([wide, bf16, default], default, scorer)
    assert picked is bf16
    assert kept == {"trial": 7, "effective_batch": 64, "reference_batch": 32, "lead": pytest.approx(1.25),
                    "needed": pytest.approx(1 + LEAVE_MARGIN)}
    # Past 1.3x the default it is safe, and the best level wins, though it leads the best
    # run at the reference batch by less than the margin.
    safe_wide = run(8, 64, 1, 135.0)
    assert at_reference([safe_wide, bf16, default], default, scorer) == (safe_wide, None)
    # Of two at other batches, the best safe one; with nothing safe, the default.
    assert at_reference([wide, safe_wide, default], default, scorer) == (safe_wide, None)
    assert at_reference([wide, default], default, scorer)[0] is default
    # A default without a level: the best run at the reference batch stands in for it.
    unmeasured = run(None, 32, 1, 0.0)
    unmeasured.level = None
    assert at_reference([wide, bf16], unmeasured, scorer)[0] is bf16
    assert at_reference([wide], unmeasured, scorer) == (wide, None)
    # Throughput, or goodput that fell back to throughput (no noise scale): the best wins.
    for plain in (Scorer("throughput", reference_batch=32), Scorer("goodput", reference_batch=32, b_noise=None)):
        assert plain.lead_needed(64) == 1.0
        assert at_reference([wide, bf16, default], default, plain) == (wide, None)


def test_the_pick_is_compared_with_the_default_as_the_race_compared_them():
    from autotune.search.race import Candidate, adjust
    from autotune.search.select import Selection

    # Rounds ran at 1.2x, 1x and 0.8x the machine's speed; the pick's run in the fast round
    # failed. By plain medians the pick reads 0.95x the default; with each round's speed
    # taken out it is the 1.05x it was measured at.
    default = Candidate(None, TrainConfig(), {}, values=[120.0, 100.0, 80.0], throughputs=[120.0, 100.0, 80.0],
                        rounds=[0, 1, 2])
    pick = Candidate(3, TrainConfig(amp="bf16"), {}, values=[105.0, 84.0], throughputs=[105.0, 84.0], rounds=[1, 2])
    other = Candidate(5, TrainConfig(micro_batch_size=64), {}, values=[108.0, 90.0, 72.0],
                      throughputs=[108.0, 90.0, 72.0], rounds=[0, 1, 2])
    adjust([pick, other, default])  # the race's levels, as ``select`` leaves them
    sel = Selection(pick, [pick, other], default, "throughput")
    assert pick.median() / default.median() == pytest.approx(0.945)
    speed, level = sel.over_default()
    assert speed == pytest.approx(1.05) and level == pytest.approx(1.05)
    assert Selection(default, [pick, other], default, "throughput").over_default() == (1.0, 1.0)
    assert Selection(pick, [pick], Candidate(None, TrainConfig(), {}), "throughput").over_default() == (None, None)
