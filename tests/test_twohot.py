"""Twohot encode / decode / loss (bins in symlog space over the data's range)."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_dreamer.objectives import symexp, symlog, twohot_bins, twohot_decode, twohot_encode
from training.objectives import twohot_loss

BINS = twohot_bins(255, -5.0, 5.0)


def reference_twohot(values: list[float], centres: list[float]) -> torch.Tensor:
    """Independent twohot: a linear scan for the bracketing pair, in float64."""
    rows = []
    for x in values:
        y = min(max(math.copysign(math.log1p(abs(x)), x), centres[0]), centres[-1])
        row = [0.0] * len(centres)
        for i in range(len(centres) - 1):
            if centres[i] <= y <= centres[i + 1]:
                frac = (y - centres[i]) / (centres[i + 1] - centres[i])
                row[i], row[i + 1] = 1.0 - frac, frac
                break
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_twohot_bins_are_uniform_in_symlog_space():
    bins = twohot_bins(5, -2.0, 2.0)
    assert torch.equal(bins, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        twohot_bins(1, -1.0, 1.0)


def test_encode_decode_round_trip_across_range_centres_edges_and_outside():
    inside = torch.linspace(-140.0, 140.0, 101)  # symlog(140) ~ 4.95, inside [-5, 5]
    centres = symexp(BINS)
    edges = symexp(torch.tensor([-5.0, 5.0]))
    for x in (inside, centres, edges):
        weights = twohot_encode(x, BINS)
        # log(weights) as logits: softmax gives the weights back, -inf where a weight is zero.
        decoded = twohot_decode(torch.log(weights), BINS)
        torch.testing.assert_close(decoded, x, rtol=1e-4, atol=1e-4)
    outside = torch.tensor([-1e6, -1000.0, 1000.0, 1e9])
    decoded = twohot_decode(torch.log(twohot_encode(outside, BINS)), BINS)
    torch.testing.assert_close(decoded, symexp(torch.tensor([-5.0, -5.0, 5.0, 5.0])), rtol=1e-5, atol=0)


def test_encoding_sums_to_one_with_two_adjacent_weights_matching_reference():
    x = torch.tensor([-1e3, -10.0, -0.3, 0.0, 0.7, 4.0, 148.0, 1e4])
    weights = twohot_encode(x, BINS)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(x)))
    nonzero = weights > 0
    assert bool((nonzero.sum(-1) <= 2).all())
    for row in nonzero:  # nonzero weights sit on neighbouring bins
        idx = row.nonzero().flatten()
        assert idx.numel() == 1 or int(idx[1] - idx[0]) == 1
    expected = reference_twohot(x.tolist(), BINS.double().tolist())
    torch.testing.assert_close(weights.double(), expected, rtol=0, atol=1e-5)


def test_encoding_at_a_bin_centre_is_one_hot():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    weights = twohot_encode(symexp(torch.tensor([-1.0, 0.0, 2.0])), bins)
    torch.testing.assert_close(weights, torch.eye(5)[[1, 2, 4]], rtol=0, atol=1e-6)


def test_loss_and_gradient_match_direct_soft_cross_entropy():
    torch.manual_seed(0)
    x = torch.tensor([[-12.0, -1.5, 0.0], [0.25, 3.0, 99.0]])
    logits = torch.randn(2, 3, 255, requires_grad=True)
    loss, num_clamped = twohot_loss(logits, x, BINS)
    target = reference_twohot(x.flatten().tolist(), BINS.double().tolist()).view(2, 3, 255).float()
    direct = -(target * F.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(loss, direct, rtol=1e-5, atol=1e-5)
    assert loss.dtype == torch.float32 and int(num_clamped) == 0
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (grad_direct,) = torch.autograd.grad(direct.sum(), logits)
    torch.testing.assert_close(grad, grad_direct, rtol=1e-4, atol=1e-5)


def test_loss_counts_clamped_targets():
    x = torch.tensor([-1e3, -140.0, 0.0, 140.0, 1e3, 1e5])
    _, num_clamped = twohot_loss(torch.zeros(6, 255), x, BINS)
    assert num_clamped.dtype == torch.int64 and int(num_clamped) == 3


@pytest.mark.parametrize("very_low", [-1e9, -math.inf])
def test_loss_is_finite_for_extreme_logits_on_zero_weight_bins(very_low):
    x = torch.tensor([0.0, 0.5])  # targets in bins 127 and 137, inside the finite logits
    logits = torch.full((2, 255), very_low)
    logits[:, 110:150] = torch.linspace(-1.0, 1.0, 40)
    logits.requires_grad_(True)
    loss, _ = twohot_loss(logits, x, BINS)
    assert bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    # The naive formula of the reviewed code yields 0 * -inf = nan here.
    naive = -(twohot_encode(x, BINS) * F.log_softmax(logits.detach(), -1)).sum(-1)
    assert bool(torch.isnan(naive).any()) == (very_low == -math.inf)


def test_loss_is_inf_when_a_target_bin_has_minus_inf_logit():
    logits = torch.zeros(1, 255)
    weights = twohot_encode(torch.tensor([1.0]), BINS)
    logits[0, weights[0].argmax()] = -math.inf
    loss, _ = twohot_loss(logits, torch.tensor([1.0]), BINS)
    assert loss.item() == math.inf


def test_low_precision_logits_give_float32_loss():
    logits = torch.randn(4, 255).to(torch.bfloat16)
    x = torch.tensor([0.0, 1.0, -3.0, 10.0])
    loss, _ = twohot_loss(logits, x, BINS)
    assert loss.dtype == torch.float32
    reference, _ = twohot_loss(logits.float(), x, BINS)
    torch.testing.assert_close(loss, reference)
    assert twohot_decode(logits, BINS).dtype == torch.float32


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="twohot_loss"):
        twohot_loss(torch.zeros(3, 255), torch.zeros(4), BINS)
    with pytest.raises(ValueError, match="twohot_loss"):
        twohot_loss(torch.zeros(3, 254), torch.zeros(3), BINS)


def test_range_fitted_to_the_rewards_spreads_targets_over_many_more_bins():
    # Review item 4: gold events of 14..120 gold at 0.01 per gold, and a -10 death penalty.
    rewards = torch.tensor([0.14, 0.2, 0.5, 1.2, -10.0])
    wide = twohot_bins(255, -20.0, 20.0)
    fitted = twohot_bins(255, symlog(torch.tensor(-10.0)).item(), symlog(torch.tensor(4.0)).item())

    def bins_spanned(bins):  # bins between the smallest and largest gold event
        weights = twohot_encode(rewards[:4], bins)
        used = weights.sum(0).nonzero().flatten()
        return int(used.max() - used.min()) + 1

    # bin width: 40/254 = 0.157 vs 4.01/254 = 0.0158 in symlog space; the events span 0.13..0.79
    assert bins_spanned(wide) <= 7  # 0.66 / 0.157 = 4.2 intervals, plus the outer neighbours
    assert bins_spanned(fitted) >= 40
    _, clamped = twohot_loss(torch.zeros(5, 255), rewards, fitted)
    assert int(clamped) == 0
