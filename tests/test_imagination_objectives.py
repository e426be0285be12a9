"""Phase-3 objectives: lambda-returns, the value loss, the reverse KL of factorised policies and PMPO, against
hand-computed values, torch.distributions, a toy task with a known optimum, and two gloo processes."""

from __future__ import annotations

import math
import os

import pytest
import torch

from modeling_dreamer.distributions import twohot_bins, twohot_decode
from training.objectives import lambda_returns, pmpo_loss, pmpo_set_sizes, policy_kl, value_loss

SPACE = {"move": {"type": "categorical", "n": 3}, "jump": {"type": "binary"}}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tiny tensors: a second thread only adds synchronisation
    yield


# ---- lambda-returns ----

def test_lambda_returns_match_hand_computed_cases() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])  # values[:, i + 1] belongs to the frame after action i
    g = 0.5
    # lambda = 0: one-step TD targets r_i + g v_{i+1}.
    torch.testing.assert_close(lambda_returns(rewards, values, gamma=g, lam=0.0), torch.tensor([[11.0, 17.0, 23.0]]))
    # lambda = 1: discounted reward sums bootstrapped from the last value.
    r2 = 3 + g * 40
    r1 = 2 + g * r2
    r0 = 1 + g * r1
    torch.testing.assert_close(lambda_returns(rewards, values, gamma=g, lam=1.0), torch.tensor([[r0, r1, r2]]))
    # lambda = 0.5: R_i = r_i + g ((1 - l) v_{i+1} + l R_{i+1}).
    q2 = 3 + g * 40
    q1 = 2 + g * (0.5 * 30 + 0.5 * q2)
    q0 = 1 + g * (0.5 * 20 + 0.5 * q1)
    torch.testing.assert_close(lambda_returns(rewards, values, gamma=g, lam=0.5), torch.tensor([[q0, q1, q2]]))


def test_a_continuation_of_zero_cuts_the_bootstrap() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    continues = torch.tensor([[1.0, 0.0, 1.0]])  # the frame after action 1 ends the episode
    out = lambda_returns(rewards, values, continues, gamma=0.5, lam=1.0)
    assert out[0, 1] == 2.0  # nothing after the end counts
    assert out[0, 0] == 1 + 0.5 * 2.0
    assert out[0, 2] == 3 + 0.5 * 40


def test_a_value_head_trained_on_a_constant_reward_converges_to_its_discounted_sum() -> None:
    """Bootstrapped value learning: the value of a state that pays r forever tends to r / (1 - gamma)."""
    gamma, reward, horizon = 0.9, 0.5, 8
    bins = twohot_bins(255, -1.0, 4.0)
    logits = torch.zeros(1, 255, requires_grad=True)  # a one-state value head
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(600):
        with torch.no_grad():
            value = twohot_decode(logits, bins).expand(1, horizon + 1)
        returns = lambda_returns(torch.full((1, horizon), reward), value, gamma=gamma, lam=0.95)
        loss, clamped = value_loss(logits[:, None].expand(1, horizon, 255), returns, bins)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert int(clamped) == 0
    assert float(twohot_decode(logits.detach(), bins)) == pytest.approx(reward / (1 - gamma), rel=0.02)


def test_value_loss_counts_clamped_returns_and_respects_the_mask() -> None:
    bins = twohot_bins(5, -1.0, 1.0)  # symlog range: |returns| above e - 1 = 1.72 are clamped
    logits = torch.zeros(1, 3, 5)
    loss, clamped = value_loss(logits, torch.tensor([[0.0, 5.0, -9.0]]), bins, torch.tensor([[True, True, False]]))
    assert int(clamped) == 1
    assert float(loss) == pytest.approx(math.log(5))  # uniform logits: the cross entropy is log(bins)


# ---- KL and PMPO ----

def test_policy_kl_equals_torch_distributions_and_is_zero_at_the_prior() -> None:
    g = torch.Generator().manual_seed(0)
    policy = {"move": torch.randn(4, 6, 3, generator=g), "jump": torch.randn(4, 6, 1, generator=g)}
    prior = {"move": torch.randn(4, 6, 3, generator=g), "jump": torch.randn(4, 6, 1, generator=g)}
    from torch.distributions import Bernoulli, Categorical, kl_divergence

    expected = kl_divergence(Categorical(logits=policy["move"]), Categorical(logits=prior["move"])) + kl_divergence(
        Bernoulli(logits=policy["jump"][..., 0]), Bernoulli(logits=prior["jump"][..., 0]))
    torch.testing.assert_close(policy_kl(policy, prior, SPACE), expected, atol=1e-6, rtol=1e-5)
    assert float(policy_kl(policy, policy, SPACE).abs().max()) < 1e-6


def test_pmpo_matches_the_formula() -> None:
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -1.5]])
    advantages = torch.tensor([[0.5, -1.0, 0.0], [-0.2, 2.0, 1.0]])  # 0 counts as positive
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    out = pmpo_loss(log_probs, advantages, kl, alpha=0.5, beta=0.3)
    negative = (-2.0 + -3.0) / 2
    positive = (-1.0 + -0.5 + -0.1 + -1.5) / 4
    expected = 0.5 * negative - 0.5 * positive + 0.3 * kl.mean()
    assert float(out.loss) == pytest.approx(expected)
    assert float(out.positive_share) == pytest.approx(4 / 6)


def test_pmpo_is_finite_when_one_set_is_empty() -> None:
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kl = torch.zeros(1, 2)
    for advantages, expected in ((torch.tensor([[1.0, 2.0]]), 0.5 * 1.5), (torch.tensor([[-1.0, -2.0]]), 0.5 * -1.5)):
        out = pmpo_loss(log_probs, advantages, kl)
        out.loss.backward()
        assert math.isfinite(float(out.loss)) and float(out.loss) == pytest.approx(expected)
        assert bool(torch.isfinite(log_probs.grad).all())
        log_probs.grad = None


def test_one_gradient_step_moves_positive_actions_up_and_negative_actions_down() -> None:
    logits = torch.zeros(2, 3, requires_grad=True)  # two states, three actions, uniform policy = prior
    prior = torch.zeros(2, 3)
    actions = torch.tensor([0, 2])
    advantages = torch.tensor([1.0, -1.0])  # the action of state 0 was good, that of state 1 bad
    log_probs = torch.log_softmax(logits, -1).gather(-1, actions[:, None])[:, 0]
    kl = policy_kl({"move": logits}, {"move": prior}, {"move": {"type": "categorical", "n": 3}})
    pmpo_loss(log_probs, advantages, kl).loss.backward()
    with torch.no_grad():
        updated = torch.log_softmax(logits - 0.1 * logits.grad, -1)
    assert updated[0, 0] > math.log(1 / 3) and updated[1, 2] < math.log(1 / 3)


def chain_task(beta: float, iterations: int = 300) -> torch.Tensor:
    """A chain of 6 states with exact dynamics: `right` moves one state right, `left` one state left (walls at
    the ends); reaching the last state pays 1 and restarts the walk at a random state. The behavioural prior
    prefers `left` (p = 0.7); the optimum is `right` everywhere. A tabular policy and value learn from imagined
    rollouts (the true dynamics) with lambda-returns and PMPO. Returns pi(right | s) for the 5 decision states."""
    torch.manual_seed(0)
    states, horizon, batch = 6, 12, 64
    prior = torch.log(torch.tensor([0.7, 0.3])).expand(states, 2)
    policy = prior.clone().requires_grad_(True)
    bins = twohot_bins(101, -1.0, 3.0)
    value_logits = torch.zeros(states, 101, requires_grad=True)
    optimizer = torch.optim.Adam([policy, value_logits], lr=0.05)
    for _ in range(iterations):
        state = torch.randint(0, states - 1, (batch,))
        visited, taken, rewards = [state], [], []
        for _ in range(horizon):
            action = torch.distributions.Categorical(logits=policy[state].detach()).sample()
            nxt = (state + (2 * action - 1)).clamp(0, states - 1)
            paid = nxt == states - 1
            rewards.append(paid.float())
            state = torch.where(paid, torch.randint(0, states - 1, (batch,)), nxt)
            taken.append(action)
            visited.append(torch.where(paid, torch.full_like(nxt, states - 1), state))
        at = torch.stack(visited[:-1], 1)
        values = twohot_decode(value_logits[torch.stack(visited, 1)], bins)
        returns = lambda_returns(torch.stack(rewards, 1), values, gamma=0.9, lam=0.95)
        log_probs = torch.log_softmax(policy[at], -1).gather(-1, torch.stack(taken, 1)[..., None])[..., 0]
        kl = policy_kl({"a": policy[at]}, {"a": prior[at]}, {"a": {"type": "categorical", "n": 2}})
        loss = pmpo_loss(log_probs, returns - values[:, :-1], kl, alpha=0.5, beta=beta).loss
        loss = loss + value_loss(value_logits[at], returns, bins)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(policy.detach(), -1)[: states - 1, 1]


def test_pmpo_finds_the_optimum_of_a_chain_from_a_biased_prior() -> None:
    p_right = chain_task(beta=0.3)
    assert float((p_right > 0.5).float().mean()) >= 0.95, p_right
    # A large beta keeps the policy at its prior (p(right) = 0.3).
    held = chain_task(beta=100.0)
    assert float((held - 0.3).abs().max()) < 0.05, held


def _pmpo_on_rank(rank: int, world: int, port: int, queue) -> None:  # pragma: no cover - runs in a subprocess
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    log_probs, advantages, kl = pmpo_inputs()
    logits = log_probs.clone().requires_grad_(True)
    rows = slice(rank * 2, rank * 2 + 2)
    # What the imagination stage does: the set sizes summed over the processes, each process's sums scaled.
    set_sizes = pmpo_set_sizes(advantages[rows])
    dist.all_reduce(set_sizes)
    out = pmpo_loss(logits[rows], advantages[rows], kl[rows], set_sizes=set_sizes, num_processes=world)
    out.loss.backward()
    dist.all_reduce(logits.grad)  # what DDP does, averaged
    queue.put((rank, float(out.loss), (logits.grad / world).tolist()))
    dist.destroy_process_group()


def pmpo_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    advantages = torch.randn(4, 5, generator=g)
    advantages[2:] = advantages[2:].abs()  # rank 1 holds only positive advantages: the set sizes differ by rank
    return -torch.rand(4, 5, generator=g), advantages, torch.rand(4, 5, generator=g)


@pytest.mark.slow
def test_two_gloo_processes_compute_the_loss_and_gradient_of_one() -> None:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_pmpo_on_rank, args=(rank, 2, 29561, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    log_probs, advantages, kl = pmpo_inputs()
    logits = log_probs.clone().requires_grad_(True)
    single = pmpo_loss(logits, advantages, kl)
    single.loss.backward()
    assert (results[0][1] + results[1][1]) / 2 == pytest.approx(float(single.loss), rel=1e-6)
    torch.testing.assert_close(torch.tensor(results[0][2]), logits.grad, atol=1e-7, rtol=1e-6)


def test_continuation_loss_targets_the_frames_after_which_the_episode_goes_on() -> None:
    from training.objectives import continuation_loss

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    terminated = torch.tensor([[False, False, True]])  # the last frame ends the episode: target 0 there
    valid = torch.tensor([[True, False, True]])
    loss, count = continuation_loss(logits, terminated, valid)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2  # -log sigmoid(2), -log(1 - sigmoid(-1))
    assert int(count) == 2 and float(loss) == pytest.approx(expected, rel=1e-6)
