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


BACKENDS = [("eager", 50.0), ("flex_attention", 50.0), ("sdpa", None)]
WINDOW = 4  # time_context_length of the tests below: a frame reads itself and the 3 frames before it


@pytest.mark.parametrize("attn,softcap", BACKENDS)
@torch.no_grad()
def test_frame_by_frame_from_an_empty_cache_equals_the_full_forward_at_every_frame(make_config, attn, softcap) -> None:
    """What act() does: one frame per call from the first frame on, over three windows. The cache holds exactly
    the frames a next frame's window reads (1, 2, 3, 3, ...), and every frame's outputs equal the full pass's."""
    model = agent_model(make_config, attn, attn_logit_softcapping=softcap, time_context_length=WINDOW)
    length = 3 * WINDOW
    x = inputs(2, length)
    full = outputs(model(**x))
    cache = None
    for t in range(length):
        out = model(**frames(x, t, t + 1), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        assert cache.num_frames == t + 1
        assert cache.cached_frames == cache.kept_frames == min(t + 1, WINDOW - 1)
        for name, got in outputs(out).items():
            torch.testing.assert_close(got[:, 0], full[name][:, t], atol=ATOL, rtol=0, msg=f"{name} at frame {t}")


@pytest.mark.parametrize("attn,softcap", BACKENDS)
@torch.no_grad()
def test_prefills_of_every_length_then_frame_by_frame_equal_the_full_forward(make_config, attn, softcap) -> None:
    """Prefill p frames in one pass (p below, at and above the window), then one frame per call."""
    model = agent_model(make_config, attn, attn_logit_softcapping=softcap, time_context_length=WINDOW)
    length = 3 * WINDOW
    x = inputs(1, length, seed=4)
    full = outputs(model(**x))
    for prefill in range(1, length):
        out = model(**frames(x, 0, prefill), use_cache=True)
        cache = out.past_key_values
        pieces = [outputs(out)]
        for t in range(prefill, length):
            pieces.append(outputs(model(**frames(x, t, t + 1), past_key_values=cache, use_cache=True)))
        assert cache.cached_frames == WINDOW - 1
        for name, expected in full.items():
            torch.testing.assert_close(torch.cat([p[name] for p in pieces], dim=1), expected, atol=ATOL, rtol=0,
                                       msg=f"{name} after a prefill of {prefill}")


@torch.no_grad()
def test_a_long_context_is_committed_in_chunks_equal_to_one_pass(make_config) -> None:
    model = agent_model(make_config, time_context_length=WINDOW, context_signal_level=1.0)
    x = inputs(2, 9, seed=5)
    whole = model.commit_frames(x["latents"], actions=x["actions"], frames_per_pass=10_000)
    chunked = model.commit_frames(x["latents"], actions=x["actions"], frames_per_pass=6)  # 3 frames per pass
    for name, expected in outputs(whole).items():
        torch.testing.assert_close(outputs(chunked)[name], expected, atol=ATOL, rtol=0, msg=name)
    assert chunked.cache.num_frames == whole.cache.num_frames == 9
    for layer in whole.cache.keys:
        torch.testing.assert_close(chunked.cache.keys[layer], whole.cache.keys[layer], atol=ATOL, rtol=0)
    assert all(torch.equal(chunked.cache.last_actions[k], whole.cache.last_actions[k]) for k in x["actions"])


@pytest.mark.parametrize("context_frames", [2, 7])
@torch.no_grad()
def test_imagination_from_contexts_shorter_and_longer_than_the_window_equals_a_full_forward(make_config, context_frames) -> None:
    model = agent_model(make_config, context_signal_level=1.0, time_context_length=WINDOW)
    x = inputs(2, context_frames, seed=6)
    horizon = 2 * WINDOW
    out = model.imagine(x["latents"], x["actions"], horizon, num_steps=2, generator=torch.Generator().manual_seed(1))
    latents = torch.cat([x["latents"], out.latents], dim=1)
    actions = {k: torch.cat([x["actions"][k][:, :-1].to(out.actions[k].dtype), out.actions[k], out.actions[k][:, -1:]],
                            dim=1) for k in out.actions}
    level = torch.ones(2, context_frames + horizon)
    full = model(latents, level, torch.full_like(level, 1 / 8), actions=actions)
    last = context_frames - 1
    torch.testing.assert_close(out.values, twohot_decode(full.value_logits, model.value_bins())[:, last:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.rewards, twohot_decode(full.reward_logits[:, :, 0], model.reward_bins())[:, last + 1:],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.agent_hidden, full.agent_hidden[:, last:], atol=1e-4, rtol=1e-4)


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


# ---- refusals: each names the argument and what was expected ----

@torch.no_grad()
def test_act_refuses_non_finite_latents_before_committing_anything(make_config) -> None:
    model = agent_model(make_config)
    agent = DreamerAgent(model, seed=0)
    latents = inputs(1, 3)["latents"]
    agent.act(latents[:, 0])
    keys = {i: k.clone() for i, k in agent.cache.keys.items()}
    reward = agent.reward().clone()
    for bad in (float("nan"), float("inf")):
        broken = latents[:, 1].clone()
        broken[0, 0, 0, 0] = bad
        for greedy in (True, False):
            with pytest.raises(ValueError, match="latents holds 1 non-finite value"):
                agent.act(broken, greedy=greedy)
    assert agent.cache.num_frames == 1 and all(torch.equal(keys[i], agent.cache.keys[i]) for i in keys)
    assert torch.equal(agent.reward(), reward)  # still the last good frame's
    action = agent.act(latents[:, 1])  # and the agent goes on
    assert agent.cache.num_frames == 2 and torch.isfinite(agent.reward()).all() and action["move"].shape == (1,)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
@torch.no_grad()
def test_a_temperature_that_is_not_positive_is_refused(make_config, temperature) -> None:
    model = agent_model(make_config)
    agent = DreamerAgent(model)
    latents = inputs(1, 2)["latents"]
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        agent.act(latents[:, 0], temperature=temperature)
    assert agent.cache.num_frames == 0
    agent.act(latents[:, 0], greedy=True, temperature=temperature)  # greedy ignores the temperature
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.imagine(latents, None, 2, temperature=temperature)


def test_a_low_temperature_sharpens_and_never_inverts_the_policy() -> None:
    from modeling_dreamer.distributions import policy_sample

    space = {"move": {"type": "categorical", "n": 3}, "jump": {"type": "binary"}}
    logits = {"move": torch.tensor([[0.0, 1.0, 2.0]]).expand(4000, 3), "jump": torch.full((4000, 1), 1.0)}
    for temperature, at_least in ((1.0, 0.60), (0.25, 0.97)):  # p(move=2) = 0.665 and 0.982
        sample = policy_sample(logits, space, temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert (sample["move"] == 2).float().mean() > at_least and sample["jump"].float().mean() > 0.7


@torch.no_grad()
def test_imagination_and_reset_refuse_bad_arguments_by_name(make_config) -> None:
    model = agent_model(make_config)
    x = inputs(2, 3)
    latents, actions = x["latents"], x["actions"]
    cases = [
        (dict(context_latents=latents[:, :0]), ValueError, "T0 >= 1 context frames"),
        (dict(context_action_mask=torch.ones(2, dtype=torch.bool)), ValueError, "context_action_mask must have shape"),
        (dict(horizon=2.5), ValueError, "horizon must be an integer >= 1"),
        (dict(horizon=0), ValueError, "horizon must be an integer >= 1"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(context_latents=latents.numpy()), TypeError, "context_latents must be a torch.Tensor"),
        (dict(task_ids=torch.zeros(2, 3, dtype=torch.long)), ValueError, "task_ids must be a \\(B,\\)"),
        (dict(policy=lambda h: {"move": torch.zeros(5, 5), "jump": torch.zeros(5, 1)}), ValueError,
         "logits for 'move' .* must have shape \\(B, n\\) = \\(2, 5\\), got \\(5, 5\\)"),
        (dict(policy=lambda h: {"move": torch.zeros(5), "jump": torch.zeros(1)}), ValueError, "got \\(5,\\)"),
        (dict(policy=lambda h: {"move": torch.zeros(2, 1, 5), "jump": torch.zeros(2, 1)}), ValueError, "got \\(2, 1, 5\\)"),
        (dict(policy=lambda h: {"move": torch.zeros(2, 5)}), ValueError, "missing \\['jump'\\]"),
    ]
    for overrides, error, message in cases:
        arguments = {**dict(context_latents=latents, context_actions=actions, horizon=2), **overrides}
        with pytest.raises(error, match=message):
            model.imagine(**arguments)
    agent = DreamerAgent(model)
    for kwargs, message in ((dict(batch_size=-1), "batch_size must be an integer >= 1"),
                            (dict(batch_size=2, task_id=torch.tensor([0, 1, 2])), "task_id must be one integer or a "),
                            (dict(task_id=7), "task_id must lie in \\[0, num_tasks = 3\\)")):
        with pytest.raises(ValueError, match=message):
            agent.reset(**kwargs)
    agent.reset(batch_size=2, task_id=torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="latents must be a torch.Tensor .*torch.from_numpy"):
        agent.act(latents[:, 0].numpy())


@torch.no_grad()
def test_imagination_reads_the_continuation_head_at_each_generated_frame(make_config) -> None:
    """With a continuation head, `continues[:, i]` is P(the episode goes on after generated frame i): the head of a
    full forward over [context, generated frames] at those frames."""
    model = agent_model(make_config, context_signal_level=1.0, continuation_head=True)
    with torch.no_grad():
        model.continue_head.out.weight.normal_(std=0.5)
    x = inputs(2, 3, seed=9)
    out = model.imagine(x["latents"], x["actions"], 4, num_steps=2, generator=torch.Generator().manual_seed(2))
    actions = {k: torch.cat([x["actions"][k][:, :-1].to(out.actions[k].dtype), out.actions[k], out.actions[k][:, -1:]],
                            dim=1) for k in out.actions}
    level = torch.ones(2, 7)
    full = model(torch.cat([x["latents"], out.latents], dim=1), level, torch.full_like(level, 1 / 8), actions=actions)
    torch.testing.assert_close(out.continues, torch.sigmoid(full.continue_logits[:, 3:]), atol=1e-5, rtol=1e-5)
    assert agent_model(make_config).imagine(x["latents"], x["actions"], 2).continues is None
