"""symlog / symexp, and the objectives on a CUDA device (marked gpu)."""

import math

import pytest
import torch

from modeling_dreamer.objectives import RunningRMS, symexp, symlog, twohot_bins
from training.objectives import (
    add_noise,
    bootstrap_target,
    mtp_policy_loss,
    mtp_reward_loss,
    sample_signal_and_step,
    shortcut_forcing_loss,
)


def test_symlog_matches_definition_and_symexp_inverts_it():
    x = torch.tensor([-1e6, -10.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 4.0, 1e6], dtype=torch.float64)
    expected = torch.tensor([math.copysign(math.log(1 + abs(v)), v) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(symlog(x), expected)
    torch.testing.assert_close(symexp(symlog(x)), x)
    assert symlog(torch.tensor(0.0)).item() == 0.0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_losses_on_cuda_match_cpu():
    bins = twohot_bins(255, -3.0, 3.0)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 9, 255, generator=g)
    rewards = torch.randn(2, 16, generator=g) * 5
    valid = torch.rand(2, 16, generator=g) > 0.2
    cpu = mtp_reward_loss(logits, rewards, valid, bins)
    gpu = mtp_reward_loss(logits.cuda().bfloat16(), rewards.cuda(), valid.cuda(), bins.cuda())
    assert gpu.loss.dtype == torch.float32 and gpu.loss.device.type == "cuda"
    assert gpu.loss.item() == pytest.approx(cpu.loss.item(), rel=2e-2)  # bf16 logits
    assert int(gpu.num_clamped) == int(cpu.num_clamped)

    space = {"move": {"type": "categorical", "n": 18}, "q": {"type": "binary"}}
    policy = {"move": torch.randn(2, 16, 9, 18, generator=g), "q": torch.randn(2, 16, 9, 1, generator=g)}
    actions = {"move": torch.randint(0, 18, (2, 16), generator=g), "q": torch.rand(2, 16, generator=g) > 0.5}
    cpu = mtp_policy_loss(policy, actions, valid, space)
    gpu = mtp_policy_loss({k: v.cuda() for k, v in policy.items()}, {k: v.cuda() for k, v in actions.items()}, valid.cuda(), space)
    assert gpu.loss.item() == pytest.approx(cpu.loss.item(), rel=1e-5)

    tau, d = sample_signal_and_step(2, 16, 64, generator=torch.Generator("cuda").manual_seed(0), device="cuda")
    assert tau.device.type == "cuda" and bool((tau <= 1 - d).all())
    z = torch.randn(2, 16, 4, 2, 2, device="cuda")
    z_tilde = add_noise(z, tau, torch.randn_like(z))
    target = bootstrap_target(lambda x, t, s: x * 0.5, z_tilde, tau, d, 1 / 64)
    out = shortcut_forcing_loss(z.bfloat16(), z, z_tilde, tau, d, 1 / 64, target)
    assert out.loss.dtype == torch.float32 and bool(torch.isfinite(out.loss))


@pytest.mark.gpu
@cuda
def test_running_rms_on_cuda_waits_on_no_host_sync():
    gpu, cpu = RunningRMS(decay=0.9).to("cuda"), RunningRMS(decay=0.9)
    values = [1.0, 4.0, float("nan"), 2.0, 3.0]
    inputs = [torch.tensor(v, device="cuda") for v in values]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs = [gpu(x) for x in inputs]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = [cpu(torch.tensor(v)).item() for v in values]
    assert [o.item() for o in outputs] == pytest.approx(expected, rel=1e-6, nan_ok=True)
    assert gpu.ema_sq.device.type == "cuda" and int(gpu.steps) == int(cpu.steps) == 4
    torch.testing.assert_close(gpu.ema_sq.cpu(), cpu.ema_sq)


# --- the model-side distributions (modeling_dreamer.distributions) ---------------------------


def test_objectives_reexports_the_model_side_twohot_helpers():
    from modeling_dreamer import distributions, objectives

    for name in ("symlog", "symexp", "twohot_bins", "twohot_encode", "twohot_decode"):
        assert getattr(objectives, name) is getattr(distributions, name), name


def test_one_symlog_serves_tensors_arrays_and_floats():
    import numpy as np

    from modeling_dreamer.symlog import symexp as generic_symexp
    from modeling_dreamer.symlog import symlog as generic_symlog

    values = [-1e6, -10.0, -1.0, 0.0, 0.5, 4.0]
    expected = [math.copysign(math.log1p(abs(v)), v) for v in values]
    assert generic_symlog(torch.tensor(values, dtype=torch.float64)).tolist() == pytest.approx(expected)
    assert generic_symlog(np.array(values)).tolist() == pytest.approx(expected)
    assert [float(generic_symlog(v)) for v in values] == pytest.approx(expected)
    assert float(generic_symexp(generic_symlog(-10.0))) == pytest.approx(-10.0)


SPACE = {"move": {"type": "categorical", "n": 5}, "jump": {"type": "binary"}}


def _policy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = {"move": torch.randn(3, 4, 5, generator=g) * 2, "jump": torch.randn(3, 4, 1, generator=g) * 2}
    actions = {"move": torch.randint(0, 5, (3, 4), generator=g), "jump": torch.rand(3, 4, generator=g) > 0.5}
    return logits, actions


def test_policy_log_prob_and_entropy_match_torch_distributions():
    from modeling_dreamer.distributions import component_entropy, component_log_prob, policy_log_prob

    logits, actions = _policy()
    categorical = torch.distributions.Categorical(logits=logits["move"])
    bernoulli = torch.distributions.Bernoulli(logits=logits["jump"].squeeze(-1))
    torch.testing.assert_close(component_log_prob(logits["move"], actions["move"], SPACE["move"]), categorical.log_prob(actions["move"]))
    torch.testing.assert_close(component_log_prob(logits["jump"], actions["jump"], SPACE["jump"]), bernoulli.log_prob(actions["jump"].float()))
    torch.testing.assert_close(component_entropy(logits["jump"], SPACE["jump"]), bernoulli.entropy())
    expected = categorical.log_prob(actions["move"]) + bernoulli.log_prob(actions["jump"].float())
    torch.testing.assert_close(policy_log_prob(logits, actions, SPACE), expected)
    torch.testing.assert_close(component_entropy(logits["move"], SPACE["move"]), categorical.entropy())
    # Extreme Bernoulli logits stay finite.
    assert torch.isfinite(component_entropy(torch.tensor([[-200.0], [200.0]]), SPACE["jump"])).all()
    with pytest.raises(ValueError, match="'move' .* needs logits \\(..., 5\\)"):
        policy_log_prob({**logits, "move": logits["move"][..., :4]}, actions, SPACE)


def test_policy_sample_follows_the_probabilities_and_greedy_takes_the_mode():
    from modeling_dreamer.distributions import policy_sample

    logits = {"move": torch.log(torch.tensor([0.1, 0.6, 0.3, 1e-9, 1e-9])).expand(20000, 5), "jump": torch.full((20000, 1), math.log(0.25 / 0.75))}
    sample = policy_sample(logits, SPACE, generator=torch.Generator().manual_seed(0))
    assert sample["move"].dtype == torch.int64 and sample["jump"].dtype == torch.bool
    frequencies = torch.bincount(sample["move"], minlength=5) / 20000
    torch.testing.assert_close(frequencies, torch.tensor([0.1, 0.6, 0.3, 0.0, 0.0]), atol=0.015, rtol=0)
    assert abs(sample["jump"].float().mean().item() - 0.25) < 0.015
    greedy = policy_sample(logits, SPACE, greedy=True)
    assert bool((greedy["move"] == 1).all()) and not bool(greedy["jump"].any())
    # A low temperature sharpens towards the mode.
    cold = policy_sample(logits, SPACE, temperature=0.05, generator=torch.Generator().manual_seed(1))
    assert (cold["move"] == 1).float().mean() > 0.99
