"""The gradient noise scale: its arithmetic, the efficiency it implies, and an estimate
checked against the exact value computed from per-example gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotune.engine.gns import NoiseScale, efficiency, grad_sq_norm, observe_micro_batches

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


def test_estimate_matches_exact_noise_scale():
    model, x, y = _logistic_problem()
    grad_sq, trace_cov = _exact_noise_scale(model, x, y)
    exact = trace_cov / grad_sq
    b, k = 8, 4
    assert 10 < exact < 40  # comparable to the batches measured, so both terms matter
    gen = torch.Generator().manual_seed(1)
    estimate = NoiseScale()
    for _ in range(400):
        # With replacement, so the samples are independent as the formula assumes.
        idx = torch.randint(N_EXAMPLES, (k, b), generator=gen)
        observe_micro_batches(model, _bce, [(x[i], y[i]) for i in idx], estimate)
    assert estimate.n == 400
    # Over 30 seeds the relative error has an sd of ~2.5% (b_noise, |G|^2), ~1.2% (trace).
    assert estimate.b_noise == pytest.approx(exact, rel=0.10)
    assert estimate.grad_sq == pytest.approx(grad_sq, rel=0.10)
    assert estimate.trace_cov == pytest.approx(trace_cov, rel=0.06)
    # The tolerance is tight enough to reject a formula that ignores |G|^2: b*E|g_b|^2.
    assert b * (grad_sq + trace_cov / b) != pytest.approx(trace_cov, rel=0.10)


def test_observe_adds_the_norms_of_each_micro_batch_and_of_their_mean():
    model, x, y = _logistic_problem()
    batches = [(x[0:3], y[0:3]), (x[3:6], y[3:6])]
    grads = []
    for inputs, target in batches:
        model.zero_grad(set_to_none=True)
        _bce(model, inputs, target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    small = (grads[0].pow(2).sum() + grads[1].pow(2).sum()).item() / 2
    big = ((grads[0] + grads[1]) / 2).pow(2).sum().item()
    expected = NoiseScale()
    expected.add(small, 3, big, 6)
    got = NoiseScale()
    observe_micro_batches(model, _bce, batches, got)
    assert got.n == 1
    assert got.sum_grad_sq == pytest.approx(expected.sum_grad_sq, rel=1e-5)
    assert got.sum_trace_cov == pytest.approx(expected.sum_trace_cov, rel=1e-5)


def test_observe_leaves_grads_none_and_parameters_unchanged():
    model, x, y = _logistic_problem()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    observe_micro_batches(model, _bce, [(x[:4], y[:4]), (x[4:8], y[4:8])], NoiseScale())
    assert all(p.grad is None for p in model.parameters())
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), old, rtol=0, atol=0)


def test_observe_rejects_one_micro_batch_and_unequal_sizes():
    model, x, y = _logistic_problem()
    with pytest.raises(ValueError, match=r"^Need at least 2 micro-batches of one size, but got sizes \[4\]\.$"):
        observe_micro_batches(model, _bce, [(x[:4], y[:4])], NoiseScale())
    with pytest.raises(ValueError, match=r"^Need at least 2 micro-batches of one size, but got sizes \[4, 3\]\.$"):
        observe_micro_batches(model, _bce, [(x[:4], y[:4]), (x[4:7], y[4:7])], NoiseScale())


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


def test_grad_sq_norm_sums_squares_and_skips_missing_grads():
    a, b, c = (nn.Parameter(torch.zeros(n)) for n in (2, 1, 3))
    a.grad, b.grad = torch.tensor([1.0, 2.0]), torch.tensor([3.0])
    assert grad_sq_norm([a, b, c]) == 14.0
    assert grad_sq_norm([c]) == 0.0
