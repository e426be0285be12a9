"""Shortcut forcing with x-prediction (paper eq. 6-8, docs/objectives.md)."""

import math

import pytest
import torch
from torch import nn

from training.objectives import (
    add_noise,
    bootstrap_target,
    sample_signal_and_step,
    shortcut_forcing_loss,
)

D_MIN = 1 / 8


def latents(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_add_noise_interpolates_per_frame():
    z, noise = latents(1, 3, 2, 2, 2, seed=0), latents(1, 3, 2, 2, 2, seed=1)
    tau = torch.tensor([[0.0, 0.25, 1.0]])
    z_tilde = add_noise(z, tau, noise)
    torch.testing.assert_close(z_tilde[0, 0], noise[0, 0])
    torch.testing.assert_close(z_tilde[0, 1], 0.75 * noise[0, 1] + 0.25 * z[0, 1])
    torch.testing.assert_close(z_tilde[0, 2], z[0, 2])


def test_samples_follow_the_grid_distribution():
    k_max, batch, frames = 8, 4000, 8
    tau, d = sample_signal_and_step(batch, frames, k_max, generator=torch.Generator().manual_seed(0))
    assert tau.shape == d.shape == (batch, frames) and tau.dtype == torch.float32
    total = batch * frames
    for k in (1, 2, 4, 8):  # K uniform over powers of two: each step size has probability 1/4
        at_k = d == 1 / k
        assert at_k.sum().item() / total == pytest.approx(0.25, abs=0.015)
        levels = tau[at_k] * k
        assert bool((levels == levels.round()).all()) and bool((tau[at_k] <= 1 - 1 / k).all())
        counts = torch.bincount(levels.long(), minlength=k).double()
        expected = at_k.sum().item() / k  # given d, tau uniform on {0, d, ..., 1 - d}
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30.0  # 7 degrees of freedom at most: p < 1e-4 for a correct sampler
    # per frame, not per sequence
    assert bool((d != d[:, :1]).any(dim=1).float().mean() > 0.9)
    with pytest.raises(ValueError, match="power of two"):
        sample_signal_and_step(1, 1, 6)


def test_a_flow_fraction_sets_the_share_of_finest_steps():
    k_max, batch, frames = 8, 4000, 8
    tau, d = sample_signal_and_step(batch, frames, k_max, generator=torch.Generator().manual_seed(1), flow_fraction=0.75)
    flow = d == 1 / k_max
    assert float(flow.float().mean()) == pytest.approx(0.75, abs=0.01)
    for k in (1, 2, 4):  # the rest: the coarser step sizes, equally likely
        assert float((d == 1 / k).float().mean()) == pytest.approx(0.25 / 3, abs=0.01)
    for k in (1, 2, 4, 8):  # tau on the grid of its step size, below 1
        levels = tau[d == 1 / k] * k
        assert bool((levels == levels.round()).all()) and bool((tau[d == 1 / k] <= 1 - 1 / k).all())
    # tau of flow frames uniform on the finest grid
    counts = torch.bincount((tau[flow] * k_max).long(), minlength=k_max).double()
    expected = flow.sum().item() / k_max
    assert float(((counts - expected) ** 2 / expected).sum()) < 30.0
    one = sample_signal_and_step(3, 4, 1, flow_fraction=0.0)  # k_max = 1: only the finest step exists
    assert bool((one[1] == 1).all()) and bool((one[0] == 0).all())
    with pytest.raises(ValueError, match="flow_fraction"):
        sample_signal_and_step(1, 1, 8, flow_fraction=1.5)


def test_flow_only_loss_is_ramp_weighted_x_space_mse():
    z_clean, z_pred, z_tilde = (latents(2, 4, 3, 2, 2, seed=s) for s in range(3))
    tau = torch.tensor([[0.0, 0.125, 0.5, 0.875], [0.25, 0.375, 0.625, 0.75]])
    d = torch.full_like(tau, D_MIN)
    weight = (0.9 * tau + 0.1).view(2, 4, 1, 1, 1)
    expected = (weight * (z_pred - z_clean) ** 2).mean()
    out = shortcut_forcing_loss(z_pred, z_clean, z_tilde, tau, d, D_MIN, bootstrap=None)
    torch.testing.assert_close(out.loss, expected)
    assert out.bootstrap_loss.item() == 0.0 and out.flow_loss.item() == pytest.approx(expected.item())
    # A bootstrap tensor is ignored on flow frames, even a non-finite one.
    nan_boot = torch.full_like(z_pred, math.nan)
    torch.testing.assert_close(shortcut_forcing_loss(z_pred, z_clean, z_tilde, tau, d, D_MIN, nan_boot).loss, expected)


def test_clean_frames_give_finite_gradients():
    """A clean frame (tau = 1, as context frames are fed at the finest step) beside bootstrap frames: the loss
    and the gradient of the prediction stay finite (a 1 / (1 - tau) on it once sent NaN into the gradient)."""
    z_clean, z_tilde, boot = (latents(1, 3, 3, 2, 2, seed=s) for s in range(3))
    z_pred = latents(1, 3, 3, 2, 2, seed=4).requires_grad_(True)
    tau = torch.tensor([[1.0, 0.5, 0.0]])
    d = torch.tensor([[D_MIN, 0.25, 0.5]])
    out = shortcut_forcing_loss(z_pred, z_clean, z_tilde, tau, d, D_MIN, boot, torch.tensor([[False, True, True]]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and bool(torch.isfinite(z_pred.grad).all())
    assert bool((z_pred.grad[0, 0] == 0).all())  # the uncounted clean frame gets exactly no gradient


def test_mask_keeps_only_counted_frames():
    z_clean, z_pred, z_tilde = (latents(1, 4, 3, 2, 2, seed=s) for s in range(3))
    tau = torch.tensor([[0.0, 0.25, 0.5, 0.75]])
    d = torch.full_like(tau, D_MIN)
    mask = torch.tensor([[True, False, True, False]])
    frame_mse = ((z_pred - z_clean) ** 2).mean(dim=(2, 3, 4))[0]
    expected = (0.1 * frame_mse[0] + 0.55 * frame_mse[2]) / 2
    out = shortcut_forcing_loss(z_pred, z_clean, z_tilde, tau, d, D_MIN, None, mask)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    none = shortcut_forcing_loss(z_pred, z_clean, z_tilde, tau, d, D_MIN, None, torch.zeros_like(mask))
    assert none.loss.item() == 0.0


def test_bootstrap_of_a_perfect_predictor_is_the_true_velocity():
    # If f always returns the clean latent x, both half steps have velocity x - noise, so the target
    # is x - noise, and the bootstrap term of a prediction x + e is (1-tau)^2 |e/(1-tau)|^2 = |e|^2.
    z_clean, noise, error = (latents(2, 3, 4, 2, 2, seed=s) for s in range(3))
    tau = torch.tensor([[0.0, 0.5, 0.25], [0.5, 0.75, 0.0]])
    d = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.125, 1.0]])
    z_tilde = add_noise(z_clean, tau, noise)
    target = bootstrap_target(lambda z, t, s: z_clean, z_tilde, tau, d, D_MIN)
    boot = (d > D_MIN).view(2, 3, 1, 1, 1)
    torch.testing.assert_close(target, torch.where(boot, z_clean - noise, torch.zeros_like(noise)), atol=1e-5, rtol=1e-5)

    out = shortcut_forcing_loss(z_clean + error, z_clean, z_tilde, tau, d, D_MIN, target)
    weight = 0.9 * tau + 0.1
    expected = (weight.view(2, 3, 1, 1, 1) * error**2).mean()  # every frame: flow or bootstrap, |e|^2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    flow_part = (weight[1, 1] * (error[1, 1] ** 2).mean()) / 6
    assert out.flow_loss.item() == pytest.approx(flow_part.item(), rel=1e-5)
    assert (out.flow_loss + out.bootstrap_loss).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_bootstrap_calls_the_model_on_half_steps_on_the_grid():
    calls = []

    def predict(z, tau, d):
        calls.append((z.clone(), tau.clone(), d.clone()))
        return 0.5 * z

    z_tilde = latents(1, 3, 2, 2, 2, seed=0)
    tau = torch.tensor([[0.5, 0.25, 0.375]])
    d = torch.tensor([[0.5, 0.25, D_MIN]])  # the last frame is a flow frame
    target = bootstrap_target(predict, z_tilde, tau, d, D_MIN)
    (z1, tau1, d1), (z2, tau2, d2) = calls
    torch.testing.assert_close(tau1, tau)
    torch.testing.assert_close(d1, torch.tensor([[0.25, 0.125, D_MIN]]))
    torch.testing.assert_close(tau2, torch.tensor([[0.75, 0.375, 0.375]]))
    torch.testing.assert_close(d2, d1)
    torch.testing.assert_close(z2[0, 2], z_tilde[0, 2])  # the flow frame stays put as context
    # by hand for frame 0 (tau 0.5, d 0.5): b1 = (0.5 z - z) / 0.5 = -z; z' = z - z/4 = 0.75 z;
    # b2 = (0.375 z - 0.75 z) / 0.25 = -1.5 z; target = (b1 + b2) / 2 = -1.25 z.
    torch.testing.assert_close(target[0, 0], -1.25 * z_tilde[0, 0])
    assert bool((target[0, 2] == 0).all())


def test_bootstrap_target_carries_no_gradient():
    model = nn.Conv3d(2, 2, 1)  # over (C, T, H, W) after a permute: any model with parameters

    def predict(z, tau, d):
        return model(z.transpose(1, 2)).transpose(1, 2) * (1 + tau + d).view(*tau.shape, 1, 1, 1)

    z_clean, noise = latents(1, 3, 2, 2, 2, seed=0), latents(1, 3, 2, 2, 2, seed=1)
    tau = torch.tensor([[0.0, 0.5, 0.25]])
    d = torch.tensor([[1.0, 0.5, 0.25]])
    z_tilde = add_noise(z_clean, tau, noise).requires_grad_(True)
    target = bootstrap_target(predict, z_tilde, tau, d, D_MIN)
    assert not target.requires_grad
    z_pred = torch.zeros_like(z_clean, requires_grad=True)
    out = shortcut_forcing_loss(z_pred, z_clean, z_tilde.detach(), tau, d, D_MIN, target)
    out.loss.backward()
    assert model.weight.grad is None and z_tilde.grad is None
    # d/dz_pred of w (1-tau)^2 mean((z_pred - z_tilde)/(1-tau) - b)^2, mean over N frames and CHW:
    one_minus = (1 - tau).view(1, 3, 1, 1, 1)
    weight = (0.9 * tau + 0.1).view(1, 3, 1, 1, 1)
    residual = (z_pred.detach() - z_tilde.detach()) / one_minus - target
    expected = weight * one_minus**2 * 2 * residual / one_minus / (3 * 8)
    torch.testing.assert_close(z_pred.grad, expected)


def test_missing_bootstrap_is_an_error_when_needed():
    z = latents(1, 2, 1, 1, 1, seed=0)
    with pytest.raises(ValueError, match="bootstrap is None"):
        shortcut_forcing_loss(z, z, z, torch.zeros(1, 2), torch.tensor([[D_MIN, 0.5]]), D_MIN, None)
