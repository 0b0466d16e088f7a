"""The gradient noise scale: per-example and group gradient norms checked against the closed
form of a logistic model's gradients, the estimate and its interval against the exact value,
Adam's preconditioner, the arithmetic, and the efficiency it implies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotune.engine import gns
from autotune.engine.gns import (
    MAX_EXAMPLES,
    NoiseScale,
    adam_preconditioner,
    efficiency,
    group_norms,
    interval,
    per_example_norms,
)

N_EXAMPLES, N_FEATURES = 512, 10


def _bce(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model(inputs).squeeze(1), target)


def _logistic_problem():
    """512 examples, labels drawn from a true model, weights set away from the optimum."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_EXAMPLES, N_FEATURES, generator=gen)
    y = (torch.rand(N_EXAMPLES, generator=gen) < torch.sigmoid(x @ torch.randn(N_FEATURES, generator=gen))).float()
    model = nn.Linear(N_FEATURES, 1)
    with torch.no_grad():
        model.weight.copy_(0.3 * torch.randn(1, N_FEATURES, generator=gen))
        model.bias.fill_(0.5)
    return model, x, y


def _exact_noise_scale(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """|G|^2 and tr(Sigma) over the dataset, from the closed-form per-example gradients
    (sigmoid(z) - y) * (x, 1) of the logistic loss."""
    with torch.no_grad():
        residual = torch.sigmoid(model(x).squeeze(1)) - y
    per_example = torch.cat([residual[:, None] * x, residual[:, None]], dim=1).double()
    mean = per_example.mean(0)
    return mean.pow(2).sum().item(), (per_example - mean).pow(2).sum(1).mean().item()


def _per_example_exact(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's gradient (sigmoid(z) - y) * (x, 1), in float64, one row each."""
    with torch.no_grad():
        residual = torch.sigmoid(model(x).squeeze(1)) - y
    return torch.cat([residual[:, None] * x, residual[:, None]], dim=1).double()


def _call(model, inputs):
    return model(inputs)


def _bce_out(output, target):
    return F.binary_cross_entropy_with_logits(output.squeeze(1), target)


def test_per_example_norms_equal_the_closed_form_gradients():
    model, x, y = _logistic_problem()
    rows = _per_example_exact(model, x[:24], y[:24])
    got = per_example_norms(model, _call, _bce_out, x[:24], y[:24])
    assert (got.size, got.groups) == (1, 24)
    assert got.sum_sq == pytest.approx(rows.pow(2).sum().item(), rel=1e-5)
    assert got.mean_sq == pytest.approx(rows.mean(0).pow(2).sum().item(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_per_example_norms_apply_the_preconditioner_to_each_example():
    model, x, y = _logistic_problem()
    scale_w, scale_b = torch.linspace(0.5, 3.0, N_FEATURES)[None, :], torch.tensor([0.25])
    rows = _per_example_exact(model, x[:16], y[:16]) * torch.cat([scale_w[0], scale_b]).double()
    got = per_example_norms(model, _call, _bce_out, x[:16], y[:16], {model.weight: scale_w, model.bias: scale_b})
    assert got.sum_sq == pytest.approx(rows.pow(2).sum().item(), rel=1e-5)
    assert got.mean_sq == pytest.approx(rows.mean(0).pow(2).sum().item(), rel=1e-5)


def test_per_example_norms_take_at_most_max_examples_in_chunks(monkeypatch):
    model, x, y = _logistic_problem()
    monkeypatch.setattr(gns, "CHUNK_BYTES", 4 * 11 * 5)  # five examples' gradients at a time
    rows = _per_example_exact(model, x[:MAX_EXAMPLES], y[:MAX_EXAMPLES])
    got = per_example_norms(model, _call, _bce_out, x[:100], y[:100])
    assert got.groups == MAX_EXAMPLES
    assert got.sum_sq == pytest.approx(rows.pow(2).sum().item(), rel=1e-5)
    assert got.mean_sq == pytest.approx(rows.mean(0).pow(2).sum().item(), rel=1e-5)


def test_group_norms_equal_the_closed_form_group_gradients():
    model, x, y = _logistic_problem()
    rows = _per_example_exact(model, x[:24], y[:24])
    groups = rows.reshape(8, 3, -1).mean(1)
    got = group_norms(model, _bce, x[:24], y[:24], groups=8)
    assert (got.size, got.groups) == (3, 8)
    assert got.sum_sq == pytest.approx(groups.pow(2).sum().item(), rel=1e-5)
    assert got.mean_sq == pytest.approx(groups.mean(0).pow(2).sum().item(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["per-example", "groups"])
def test_estimate_matches_exact_noise_scale(method):
    model, x, y = _logistic_problem()
    grad_sq, trace_cov = _exact_noise_scale(model, x, y)
    exact = trace_cov / grad_sq
    assert 10 < exact < 40  # comparable to the batches measured, so both terms matter
    gen = torch.Generator().manual_seed(1)
    observations = []
    for _ in range(100):
        # With replacement, so the samples are independent as the formula assumes.
        idx = torch.randint(N_EXAMPLES, (32,), generator=gen)
        one = NoiseScale()
        if method == "per-example":
            per_example_norms(model, _call, _bce_out, x[idx], y[idx]).add_to(one)
        else:
            group_norms(model, _bce, x[idx], y[idx], groups=16).add_to(one)
        observations.append(one)
    got = interval(observations, blocks=5)
    assert got.estimate == pytest.approx(exact, rel=0.12)
    assert got.low < exact < got.high and got.width < 2.0
    # The tolerance is tight enough to reject a formula that ignores |G|^2: tr(Sigma) / E|g_1|^2.
    assert trace_cov / (grad_sq + trace_cov) != pytest.approx(exact, rel=0.12)


def test_per_example_norms_call_a_dict_model_by_its_convention():
    """Dict inputs are mapped key by key, and the model is called as the task calls it."""

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(N_FEATURES, 1)

        def forward(self, features, scale):
            return self.linear(features) * scale

    model, x, y = _logistic_problem()
    named = Named()
    named.linear.load_state_dict(model.state_dict())
    inputs = {"features": x[:16], "scale": torch.ones(16, 1)}
    got = per_example_norms(named, lambda m, batch: m(**batch), _bce_out, inputs, y[:16])
    want = per_example_norms(model, _call, _bce_out, x[:16], y[:16])
    assert got.sum_sq == pytest.approx(want.sum_sq, rel=1e-6) and got.mean_sq == pytest.approx(want.mean_sq, rel=1e-6)


def test_batch_norm_in_training_mode_cannot_be_mapped_and_groups_can():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    x, y = torch.randn(32, 4), torch.randint(2, (32,))
    with pytest.raises(Exception):
        per_example_norms(model, _call, F.cross_entropy, x, y)
    got = group_norms(model, lambda m, i, t: F.cross_entropy(m(i), t), x, y)
    assert (got.size, got.groups) == (2, 16) and got.sum_sq > 0


def test_adam_preconditioner_is_one_over_the_bias_corrected_second_moment():
    model, x, y = _logistic_problem()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
    assert adam_preconditioner(adam) is None  # no step yet
    for _ in range(3):
        adam.zero_grad()
        _bce(model, x[:32], y[:32]).backward()
        adam.step()
        sgd.step()
    scales = adam_preconditioner(adam)
    v = adam.state[model.weight]["exp_avg_sq"]
    torch.testing.assert_close(scales[model.weight], 1.0 / ((v / (1 - 0.99 ** 3)).sqrt() + 1e-6))
    assert adam_preconditioner(sgd) is None


def test_interval_is_unbounded_when_a_block_has_no_estimate_and_wide_when_blocks_disagree():
    def obs(small_sq, big_sq):
        one = NoiseScale()
        one.add(small_sq, 1, big_sq, 32)
        return one

    steady = interval([obs(2.0, 1.0)] * 10, blocks=5)
    assert steady.low == pytest.approx(steady.estimate) == pytest.approx(steady.high) and steady.width == pytest.approx(1.0)
    negative = interval([obs(2.0, 1.0)] * 8 + [obs(1.0, 2.0)] * 2, blocks=5)  # the last block: tr(Sigma) < 0
    assert negative.blocks[-1] is None and negative.low is None and negative.width == math.inf
    drifting = interval([obs(2.0, 1.0)] * 5 + [obs(5.0, 1.0)] * 5, blocks=5)
    assert drifting.width > steady.width and drifting.blocks[0] < drifting.blocks[-1]


def test_add_gives_the_unbiased_estimates():
    est = NoiseScale()
    est.add(5.0, 2, 2.0, 8)  # |G|^2 = (16 - 10) / 6 = 1; tr = 3 / (1/2 - 1/8) = 8
    assert (est.n, est.grad_sq, est.trace_cov, est.b_noise) == (1, 1.0, 8.0, 8.0)
    est.add(3.0, 1, 1.5, 4)  # |G|^2 = (6 - 3) / 3 = 1; tr = 1.5 / (1 - 1/4) = 2
    assert est.to_dict() == {"n": 2, "grad_sq": 1.0, "trace_cov": 5.0, "b_noise": 5.0}


def test_b_noise_is_the_ratio_of_means_not_the_mean_of_ratios():
    est = NoiseScale()
    est.add(5.0, 2, 2.0, 8)  # |G|^2 = 1, tr = 8: ratio 8
    est.add(10.0, 1, 4.0, 2)  # |G|^2 = -2, tr = 12: ratio -6
    assert est.b_noise is None  # mean |G|^2 = -1/2, though the mean of ratios is 1
    est.add(9.0, 1, 5.0, 3)  # |G|^2 = 3, tr = 6: ratio 2
    assert est.b_noise == pytest.approx(26.0 / 2.0)  # the mean of ratios would be 4/3


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [(1.0, 1, 2.0, 2)],  # tr(Sigma) = -2 <= 0
        [(10.0, 1, 1.0, 2)],  # |G|^2 = -8 <= 0
        [(4.0, 1, 4.0, 2)],  # tr(Sigma) = 0
    ],
)
def test_b_noise_is_none_without_positive_estimates(pairs):
    est = NoiseScale()
    for pair in pairs:
        est.add(*pair)
    assert est.b_noise is None
    assert est.to_dict()["b_noise"] is None
    assert (est.grad_sq is None) == (not pairs)


def test_merge_pools_the_pairs_of_both():
    pairs = [(5.0, 2, 2.0, 8), (3.0, 1, 1.5, 4), (9.0, 1, 5.0, 3)]
    first, second, together = NoiseScale(), NoiseScale(), NoiseScale()
    first.add(*pairs[0])
    for pair in pairs[1:]:
        second.add(*pair)
    for pair in pairs:
        together.add(*pair)
    merged = first.merge(second)
    assert merged.to_dict() == pytest.approx(together.to_dict())
    assert merged.to_dict() != first.to_dict()
    assert first.n == 1 and second.n == 2  # the inputs are left as they were


@pytest.mark.parametrize("small, big", [(4, 4), (8, 4), (0, 4)])
def test_add_rejects_bad_batch_sizes(small, big):
    with pytest.raises(
        ValueError,
        match=rf"^`1 <= small_batch < big_batch` must hold, but got \(small_batch={small}, big_batch={big}\)\.$",
    ):
        NoiseScale().add(1.0, small, 0.5, big)


def test_efficiency_for_known_numbers():
    assert efficiency(32, 32, 32.0) == 1.0
    assert efficiency(96, 32, 32.0) == pytest.approx(2.0 / 4.0)
    assert efficiency(8, 32, 32.0) == pytest.approx(2.0 / 1.25)


def test_efficiency_decreases_with_batch():
    values = [efficiency(b, 64, 100.0) for b in (1, 8, 64, 256, 4096)]
    assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    assert values[2] == 1.0 and values[1] > 1.0 > values[3]


def test_efficiency_limits():
    for batch in (1, 64, 4096):
        assert efficiency(batch, 64, math.inf) == 1.0
        assert efficiency(batch, 64, None) == 1.0
        assert efficiency(batch, 64, 1e12) == pytest.approx(1.0, abs=1e-8)
    # Tiny B_noise: efficiency tends to B0 / B (examples scale with the batch).
    assert efficiency(256, 64, 1e-9) == pytest.approx(64 / 256)


@pytest.mark.parametrize("batch, reference", [(0, 32), (32, 0), (-1, 32)])
def test_efficiency_rejects_non_positive_batches(batch, reference):
    with pytest.raises(
        ValueError,
        match=rf"^Batch sizes must be positive, but got \(batch={batch}, reference_batch={reference}\)\.$",
    ):
        efficiency(batch, reference, 10.0)
