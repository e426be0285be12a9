"""The agent in a real-time loop: duplicate frames, executed actions, per-component temperature and logit bias,
decoded values of binned components, the tokenizer it was trained with; action components with roles (world-model
inputs, policy targets, a held input), and a per-frame state vector behind the agent firewall. Expectations come
from the uncached full forward pass of the same model."""

from __future__ import annotations

import pytest
import torch

from modeling_dreamer import DreamerAgent, DreamerAgentModel

ATOL = 1e-5

# A held click: `movement` (the cell of the last click, held until the next) is what the world model sees;
# the policy chooses whether a new click happens and its cell. `jump` is both an input and a target.
GRID = {"kind": "grid", "columns": 2, "rows": 2, "x": [0.0, 1.0], "y": [0.0, 1.0], "noop": True}
ROLE_SPACE = {
    "movement": {"type": "categorical", "n": 5, "role": "input", "held": {"flag": "new_click", "value": "click_cell"},
                 "meaning": GRID},
    "new_click": {"type": "binary", "role": "target"},
    "click_cell": {"type": "categorical", "n": 5, "role": "target", "meaning": GRID},
    "jump": {"type": "binary"},
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def agent_model(make_config, seed: int = 0, **overrides) -> DreamerAgentModel:
    torch.manual_seed(seed)
    model = DreamerAgentModel._from_config(make_config(**overrides), attn_implementation="eager").eval()
    with torch.no_grad():
        for head in (model.reward_head, model.value_head):
            head.out.weight.normal_(std=0.5)
    return model


def latents(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 8, 4, 4, generator=torch.Generator().manual_seed(seed))


def full_forward(model: DreamerAgentModel, x: torch.Tensor, actions: dict, **kwargs):
    level = torch.full(x.shape[:2], model.config.context_tau)
    return model(x, level, torch.full_like(level, 1 / model.config.k_max), actions=actions, **kwargs)


@torch.no_grad()
def test_skip_holds_the_last_action_and_commits_nothing(make_config) -> None:
    agent = DreamerAgent(agent_model(make_config), seed=2)
    agent.reset(batch_size=2)
    x = latents(2, 3)
    with pytest.raises(ValueError, match="no action yet"):
        agent.skip()
    action = agent.act(x[:, 0])
    keys = {i: k.clone() for i, k in agent.cache.keys.items()}
    reward = agent.reward().clone()
    held = agent.skip()
    assert all(torch.equal(held[k], action[k]) for k in action)
    assert agent.cache.num_frames == 1 and all(torch.equal(keys[i], agent.cache.keys[i]) for i in keys)
    assert torch.equal(agent.reward(), reward)
    agent.act(x[:, 1])
    assert agent.cache.num_frames == 2


@torch.no_grad()
def test_the_executed_action_is_what_the_next_frame_embeds(make_config) -> None:
    """The game dropped the sampled action: with `executed`, frame 1 embeds what was actually done at frame 0, so
    frame 1's outputs equal a full forward with that action (context_signal_level 1: clean, comparable)."""
    model = agent_model(make_config, context_signal_level=1.0)
    agent = DreamerAgent(model, seed=0)
    agent.reset(batch_size=2)
    x = latents(2, 2)
    sampled = agent.act(x[:, 0])
    done = {"move": (sampled["move"] + 1) % 5, "jump": ~sampled["jump"]}
    agent.act(x[:, 1], executed=done)
    level = torch.ones(2, 2)
    full = model(x, level, torch.full_like(level, 1 / 8),
                 actions={k: torch.stack([v, v], dim=1) for k, v in done.items()})
    torch.testing.assert_close(agent.last.agent_hidden[:, -1], full.agent_hidden[:, 1], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="unknown components \\['fly'\\]"):
        agent.record_executed({"fly": torch.zeros(2)})


@torch.no_grad()
def test_a_logit_bias_of_plus_or_minus_infinity_forces_a_component(make_config) -> None:
    agent = DreamerAgent(agent_model(make_config), seed=4)
    agent.reset(batch_size=64)
    x = latents(64, 4)
    for t in range(4):
        bias = {"move": torch.tensor([0.0, 0.0, 0.0, float("inf"), 0.0]), "jump": float("-inf" if t % 2 else "inf")}
        action = agent.act(x[:, t], logit_bias=bias, temperature={"move": 3.0})
        assert bool((action["move"] == 3).all())
        assert bool((action["jump"] == (t % 2 == 0)).all())
    gated = agent.act(latents(64, 1, seed=9)[:, 0], logit_bias={"move": torch.tensor([0.0, *[float("-inf")] * 4])})
    assert bool((gated["move"] == 0).all())  # every class but 0 ruled out
    with pytest.raises(ValueError, match="no policy component \\['fly'\\]"):
        agent.act(x[:, 0], logit_bias={"fly": 1.0})


@torch.no_grad()
def test_held_inputs_follow_the_policys_targets(make_config) -> None:
    """The world model embeds only its inputs (the held `movement`, `jump`), the policy predicts only its targets
    (`new_click`, `click_cell`, `jump`); acting derives the held movement: the cell of a new click, else the last."""
    model = agent_model(make_config, action_space=ROLE_SPACE, context_signal_level=1.0)
    assert set(model.policy_head.sizes) == {"new_click", "click_cell", "jump"}
    assert set(model.dreamer.embeddings.actions.components) == {"movement", "jump"}
    agent = DreamerAgent(model, seed=1)
    agent.reset(batch_size=8)
    x = latents(8, 6, seed=3)
    taken = []
    for t in range(6):
        bias = {"new_click": float("inf") if t in (0, 3) else float("-inf")}
        taken.append(agent.act(x[:, t], logit_bias=bias))
    for t in range(1, 6):
        clicked = taken[t]["new_click"]
        expected = torch.where(clicked, taken[t]["click_cell"], taken[t - 1]["movement"])
        assert torch.equal(taken[t]["movement"], expected), t
    assert torch.equal(taken[0]["movement"], taken[0]["click_cell"])
    # What the cached agent saw equals a full forward with the derived actions.
    actions = {k: torch.stack([a[k] for a in taken], dim=1) for k in ROLE_SPACE}
    full = full_forward(model, x, actions)
    torch.testing.assert_close(agent.last.agent_hidden[:, -1], full.agent_hidden[:, -1], atol=ATOL, rtol=0)
    decoded = agent.decode({"click_cell": torch.tensor([0, 1, 4])})["click_cell"]
    assert decoded == [None, (0.25, 0.25), (0.75, 0.75)]  # the no-op class, then row-major cells of the 2 x 2 grid


@torch.no_grad()
def test_imagination_derives_held_inputs_like_a_full_forward(make_config) -> None:
    model = agent_model(make_config, action_space=ROLE_SPACE, context_signal_level=1.0)
    g = torch.Generator().manual_seed(5)
    x = latents(2, 3, seed=6)
    context = {"movement": torch.randint(0, 5, (2, 3), generator=g), "new_click": torch.zeros(2, 3, dtype=torch.bool),
               "click_cell": torch.zeros(2, 3, dtype=torch.long), "jump": torch.zeros(2, 3, dtype=torch.bool)}
    out = model.imagine(x, context, 4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert set(out.actions) == set(ROLE_SPACE)
    previous = context["movement"][:, -2]
    for i in range(4):
        expected = torch.where(out.actions["new_click"][:, i], out.actions["click_cell"][:, i], previous)
        assert torch.equal(out.actions["movement"][:, i], expected)
        previous = expected
    actions = {k: torch.cat([context[k][:, :-1].to(out.actions[k].dtype), out.actions[k], out.actions[k][:, -1:]], dim=1)
               for k in ROLE_SPACE}
    level = torch.ones(2, 7)
    full = model(torch.cat([x, out.latents], dim=1), level, torch.full_like(level, 1 / 8), actions=actions)
    torch.testing.assert_close(out.agent_hidden, full.agent_hidden[:, 2:], atol=1e-4, rtol=1e-4)


def test_an_input_no_target_sets_is_refused_by_the_action_space() -> None:
    from modeling_dreamer.action_space import validate_action_space

    with pytest.raises(ValueError, match="held flag 'jump' must be a binary policy target"):
        validate_action_space({"m": {"type": "categorical", "n": 3, "role": "input",
                                     "held": {"flag": "jump", "value": "c"}},
                               "c": {"type": "categorical", "n": 3, "role": "target"},
                               "jump": {"type": "binary", "role": "input"}})
    with pytest.raises(ValueError, match="no component is a policy target"):
        validate_action_space({"m": {"type": "binary", "role": "input"}})


@torch.no_grad()
def test_the_state_token_keeps_the_firewall_and_causality_bitwise(make_config) -> None:
    model = agent_model(make_config, state_size=3, state_names=["hp", "level", "gold"], predict_state=True)
    x = latents(2, 5, seed=7)
    g = torch.Generator().manual_seed(8)
    state, known = torch.randn(2, 5, 3, generator=g), torch.rand(2, 5, 3, generator=g) > 0.3
    level = torch.full((2, 5), 0.5)
    a = model(x, level, state=state, state_mask=known, task_ids=torch.tensor([0, 1]))
    b = model(x, level, state=state, state_mask=known, task_ids=torch.tensor([2, 2]))
    assert torch.equal(a.latent_pred, b.latent_pred)  # agent tokens and tasks never reach the latents
    assert a.state_pred.shape == (2, 5, 3)
    later = state.clone()
    later[:, 3:] += 5.0  # the future's state
    c = model(x, level, state=later, state_mask=known, task_ids=torch.tensor([0, 1]))
    for field in ("latent_pred", "agent_hidden", "state_pred"):
        assert torch.equal(getattr(c, field)[:, :3], getattr(a, field)[:, :3]), field
    assert not torch.equal(c.latent_pred[:, 3], a.latent_pred[:, 3])  # the state is an input of its own frame
    unknown = state.clone()
    unknown[~known] = 123.0  # an unknown value enters as unknown, whatever it holds
    d = model(x, level, state=unknown, state_mask=known, task_ids=torch.tensor([0, 1]))
    assert torch.equal(d.latent_pred, a.latent_pred)
    with pytest.raises(ValueError, match="state must have shape"):
        model(x, level, state=state[:, :, :2])


def test_an_agent_refuses_a_tokenizer_it_was_not_trained_with(make_config, tmp_path) -> None:
    model = agent_model(make_config, tokenizer_name="tok", tokenizer_hash="abc123")
    model.save_pretrained(tmp_path)
    DreamerAgent.from_pretrained(tmp_path, tokenizer=("tok", "abc123"))
    with pytest.raises(ValueError, match="trained on the latents of tokenizer 'tok' .hash abc123.*hash ffff"):
        DreamerAgent.from_pretrained(tmp_path, tokenizer=("other", "ffff"))


def test_init_from_refuses_another_tokenizer_or_action_space(make_config, tmp_path) -> None:
    from types import SimpleNamespace

    from modeling_dreamer.errors import RunError
    from training.stages.base import load_source_config

    agent_model(make_config, tokenizer_name="tok", tokenizer_hash="abc123").save_pretrained(tmp_path)
    schema = SimpleNamespace(latent_shape=(8, 4, 4), action_space=make_config().action_space, state_names=[],
                             tokenizer={"name": "tok", "hash": "abc123"})
    load_source_config(str(tmp_path), schema)
    with pytest.raises(RunError, match="tokenizer 'tok' .hash abc123.*'new' .hash 999"):
        load_source_config(str(tmp_path), SimpleNamespace(**{**vars(schema), "tokenizer": {"name": "new", "hash": "999"}}))
    with pytest.raises(RunError, match="action space"):
        load_source_config(str(tmp_path), SimpleNamespace(**{**vars(schema), "action_space": ROLE_SPACE}))
