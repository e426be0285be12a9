"""Inference: the time layers' key/value cache, the sliding context window, the shortcut sampler, the agent
API and imagination rollouts. Expectations come from the uncached full forward pass of the same model."""

from __future__ import annotations

import pytest
import torch

from modeling_dreamer import DreamerAgent, DreamerAgentModel, DreamerCache, DreamerModel, shortcut_sample
from modeling_dreamer.distributions import policy_log_prob, twohot_decode

ATOL = 1e-5  # float32: the cached path sums the same terms in another order


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def agent_model(make_config, attn: str = "eager", seed: int = 0, **overrides) -> DreamerAgentModel:
    """A small agent with every head's output layer redrawn (zero-initialised ones would hide wiring errors)."""
    torch.manual_seed(seed)
    model = DreamerAgentModel._from_config(make_config(**overrides), attn_implementation=attn).eval()
    with torch.no_grad():
        for head in (model.reward_head, model.value_head):
            head.out.weight.normal_(std=0.5)
    return model


def inputs(batch: int, frames: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(batch, frames, 8, 4, 4, generator=g),
        signal_level=torch.randint(0, 9, (batch, frames), generator=g) / 8,
        step_size=1.0 / 2 ** torch.randint(0, 4, (batch, frames), generator=g).float(),
        actions={"move": torch.randint(0, 5, (batch, frames), generator=g),
                 "jump": torch.rand(batch, frames, generator=g) > 0.5},
    )


def frames(x: dict, start: int, stop: int) -> dict:
    """The inputs of frames start..stop-1."""
    return {k: ({n: a[:, start:stop] for n, a in v.items()} if isinstance(v, dict) else v[:, start:stop])
            for k, v in x.items()}


def outputs(out) -> dict[str, torch.Tensor]:
    fields = {"latent_pred": out.latent_pred, "agent_hidden": out.agent_hidden, "reward_logits": out.reward_logits,
              "value_logits": out.value_logits}
    fields.update({f"policy/{k}": v for k, v in out.policy_logits.items()})
    return fields


@pytest.mark.parametrize("attn,softcap", [("eager", 50.0), ("flex_attention", 50.0), ("sdpa", None)])
@pytest.mark.parametrize("context", [None, 3])
@torch.no_grad()
def test_prefill_then_frame_by_frame_equals_one_full_forward(make_config, attn, softcap, context) -> None:
    model = agent_model(make_config, attn, attn_logit_softcapping=softcap, time_context_length=context)
    x = inputs(2, 7)
    full = outputs(model(**x))
    out = model(**frames(x, 0, 3), use_cache=True)
    pieces = [outputs(out)]
    cache = out.past_key_values
    assert isinstance(cache, DreamerCache) and cache.num_frames == 3
    for t in range(3, 7):
        pieces.append(outputs(model(**frames(x, t, t + 1), past_key_values=cache, use_cache=True)))
    assert cache.num_frames == 7
    assert cache.cached_frames == (7 if context is None else context - 1)  # only what a next frame can read
    for name, expected in full.items():
        torch.testing.assert_close(torch.cat([p[name] for p in pieces], dim=1), expected, atol=ATOL, rtol=0, msg=name)


@torch.no_grad()
def test_sliding_window_reads_exactly_the_last_frames(make_config) -> None:
    """Each time layer reads a window of 3 frames (its own and 2 before); over the model's 2 time layers a frame
    sees 2 x 2 = 4 frames back: frame 5 depends on frame 1 and on nothing earlier."""
    model = agent_model(make_config, time_context_length=3)
    assert len(model.config.time_layer_indices) == 2
    x = inputs(1, 6)
    base = outputs(model(**x))
    for changed, should_change in ((0, False), (1, True)):
        y = inputs(1, 6)
        y["latents"][:, changed] += 1.0
        out = outputs(model(**y))
        moved = not torch.allclose(out["agent_hidden"][:, 5], base["agent_hidden"][:, 5], atol=1e-6)
        assert moved == should_change, changed


@torch.no_grad()
def test_cached_path_keeps_firewall_and_causality(make_config) -> None:
    model = agent_model(make_config)
    x = inputs(2, 5)
    cache_a = model(**frames(x, 0, 4), use_cache=True, task_ids=torch.tensor([0, 1])).past_key_values
    cache_b = model(**frames(x, 0, 4), use_cache=True, task_ids=torch.tensor([2, 2])).past_key_values
    a = model(**frames(x, 4, 5), past_key_values=cache_a, task_ids=torch.tensor([0, 1]))
    b = model(**frames(x, 4, 5), past_key_values=cache_b, task_ids=torch.tensor([2, 2]))
    assert torch.equal(a.latent_pred, b.latent_pred)  # agent tokens and tasks never reach the latents
    # Committing frame 4 writes nothing about frames <= 3: a pass reading the cache afterwards over frame 3's
    # successor sees the same history whatever frame 4 was.
    before = {i: k.clone() for i, k in cache_a.keys.items()}
    model(**frames(x, 4, 5), past_key_values=cache_a, task_ids=torch.tensor([0, 1]))  # read only
    assert all(torch.equal(before[i], cache_a.keys[i]) for i in before) and cache_a.num_frames == 4


@torch.no_grad()
def test_recorded_actions_enter_the_next_frame_like_a_full_forward(make_config) -> None:
    """Commit frames without their actions (not chosen yet), record each action after the commit: the outputs
    equal one full forward with those actions."""
    model = agent_model(make_config)
    x = inputs(2, 4)
    full = outputs(model(**x))
    cache = None
    pieces = []
    for t in range(4):
        step = frames(x, t, t + 1)
        actions = step.pop("actions")
        out = model(**step, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        cache.record_actions({k: v[:, 0] for k, v in actions.items()})
        pieces.append(outputs(out))
    for name, expected in full.items():
        torch.testing.assert_close(torch.cat([p[name] for p in pieces], dim=1), expected, atol=ATOL, rtol=0, msg=name)


# ---- the shortcut sampler ----

@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_sampler_returns_a_perfect_predictors_latent_exactly_and_stays_on_the_grid(num_steps: int) -> None:
    clean = torch.randn(3, 1, 8, 4, 4)
    calls: list[tuple[float, float]] = []

    def predict(z, tau, d):  # a stand-in model that knows the answer
        calls.append((float(tau[0, 0]), float(d[0, 0])))
        assert torch.all(tau == tau[0, 0]) and torch.all(d == d[0, 0])
        return clean

    out = shortcut_sample(predict, torch.randn(3, 1, 8, 4, 4), num_steps)
    assert torch.equal(out, clean)
    k_max = 64
    assert [tau for tau, _ in calls] == [k / num_steps for k in range(num_steps)]
    assert all(d == 1 / num_steps and (tau * k_max).is_integer() for tau, d in calls)
    with pytest.raises(ValueError, match="power of two"):
        shortcut_sample(predict, clean, 3)


@torch.no_grad()
def test_generation_reads_the_cache_and_never_writes_it(make_config) -> None:
    model = DreamerModel(make_config()).eval()
    cache = model(**frames(inputs(2, 3), 0, 3), use_cache=True).past_key_values
    keys = {i: k.clone() for i, k in cache.keys.items()}
    first = model.generate_frame(cache, 4, torch.Generator().manual_seed(5))
    again = model.generate_frame(cache, 4, torch.Generator().manual_seed(5))
    assert first.shape == (2, 8, 4, 4) and torch.equal(first, again)
    assert cache.num_frames == 3 and all(torch.equal(keys[i], cache.keys[i]) for i in keys)


# ---- the agent API ----

@torch.no_grad()
def test_act_commits_one_frame_and_samples_from_the_offset_0_policy(make_config, tmp_path) -> None:
    model = agent_model(make_config, context_signal_level=1.0)  # clean context: comparable with a full forward
    model.save_pretrained(tmp_path)
    agent = DreamerAgent.from_pretrained(tmp_path, seed=3)
    agent.reset(batch_size=2, task_id=1)
    x = inputs(2, 5)
    chosen = {"move": [], "jump": []}
    rewards, values = [], []
    for t in range(5):
        action = agent.act(x["latents"][:, t], greedy=(t % 2 == 0))
        assert action["move"].shape == (2,) and action["move"].dtype == torch.int64 and action["jump"].dtype == torch.bool
        for k in chosen:
            chosen[k].append(action[k])
        rewards.append(agent.reward())
        values.append(agent.value())
    actions = {k: torch.stack(v, dim=1) for k, v in chosen.items()}
    level = torch.ones(2, 5)
    full = agent.model(x["latents"], level, torch.full_like(level, 1 / 8), actions=actions, task_ids=torch.tensor([1, 1]))
    # Greedy steps took the mode of the offset-0 policy of the same frame and history.
    for t in (0, 2, 4):
        assert torch.equal(actions["move"][:, t], full.policy_logits["move"][:, t, 0].argmax(-1))
        assert torch.equal(actions["jump"][:, t], full.policy_logits["jump"][:, t, 0, 0] > 0)
    torch.testing.assert_close(torch.stack(rewards, 1), twohot_decode(full.reward_logits[:, :, 0], agent.model.reward_bins()),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(values, 1), twohot_decode(full.value_logits, agent.model.value_bins()),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="latents must be"):
        agent.act(torch.zeros(3, 8, 4, 4))
    agent.reset()
    with pytest.raises(ValueError, match="act\\(\\) first"):
        agent.reward()


@torch.no_grad()
def test_act_is_reproducible_from_the_seed(make_config) -> None:
    model = agent_model(make_config)
    latents = inputs(1, 6)["latents"]

    def play(seed: int) -> list[int]:
        agent = DreamerAgent(model, seed=seed)
        return [int(agent.act(latents[:, t])["move"]) for t in range(6)]

    assert play(1) == play(1)


# ---- imagination ----

@torch.no_grad()
def test_imagination_indexing_matches_a_full_forward_over_the_rollout(make_config) -> None:
    """Rollouts of a model whose context is fed clean: a full forward over [context, generated frames] with
    [context actions, imagined actions] reproduces the rollout's rewards, values and log-probabilities at the
    documented indices."""
    model = agent_model(make_config, context_signal_level=1.0)
    x = inputs(2, 3)
    horizon = 4
    out = model.imagine(x["latents"], x["actions"], horizon, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (2, horizon, 8, 4, 4) and out.values.shape == (2, horizon + 1)
    latents = torch.cat([x["latents"], out.latents], dim=1)
    actions = {k: torch.cat([x["actions"][k][:, :-1].to(out.actions[k].dtype), out.actions[k],
                             out.actions[k][:, -1:]], dim=1) for k in out.actions}  # last entry: never read
    level = torch.ones(2, 3 + horizon)
    full = model(latents, level, torch.full_like(level, 1 / 8), actions=actions)
    rewards = twohot_decode(full.reward_logits[:, :, 0], model.reward_bins())
    values = twohot_decode(full.value_logits, model.value_bins())
    last_context = 2
    torch.testing.assert_close(out.values, values[:, last_context:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.rewards, rewards[:, last_context + 1:], atol=1e-4, rtol=1e-4)
    logits = {k: v[:, last_context:last_context + horizon, 0] for k, v in full.policy_logits.items()}
    taken = {k: v for k, v in out.actions.items()}
    torch.testing.assert_close(out.log_probs, policy_log_prob(logits, taken, model.config.action_space), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.agent_hidden, full.agent_hidden[:, last_context:], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_imagination_is_reproducible_and_follows_a_given_policy(make_config) -> None:
    model = agent_model(make_config)
    x = inputs(3, 4)
    a = model.imagine(x["latents"], x["actions"], 5, generator=torch.Generator().manual_seed(7))
    b = model.imagine(x["latents"], x["actions"], 5, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a[k], b[k]) for k in ("latents", "rewards", "values", "log_probs"))

    def always_move_three(hidden):  # a deterministic policy given as logits
        return {"move": torch.tensor([-1e4, -1e4, -1e4, 0.0, -1e4]).expand(hidden.shape[0], 5),
                "jump": torch.full((hidden.shape[0], 1), -1e4)}

    c = model.imagine(x["latents"], x["actions"], 5, policy=always_move_three, generator=torch.Generator().manual_seed(7))
    assert bool((c.actions["move"] == 3).all()) and not bool(c.actions["jump"].any())
    torch.testing.assert_close(c.log_probs, torch.zeros_like(c.log_probs), atol=1e-6, rtol=0)
