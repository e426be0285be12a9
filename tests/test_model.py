"""Behaviour of the Dreamer model: shapes, attention backends, firewall, causality, independent
frames, GQA, gradient checkpointing and head initialisation (code review items 5 and 10)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel
from modeling_dreamer.layers import attention

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a shared 2-core machine the second thread's synchronisation costs
    more than it gains (measured 2-3x slower). Restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ACTION_SPACE = {"move": {"type": "categorical", "n": 5}, "jump": {"type": "binary"}}


def small_config(**overrides) -> DreamerConfig:
    """Fixture-sized latents (8, 4, 4), two space and two time layers, GQA 4/2, 2 agent tokens."""
    fields = dict(
        latent_channels=8, latent_height=4, latent_width=4, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, time_every=2, num_register_tokens=2, k_max=8,
        action_space=ACTION_SPACE, num_tasks=3, agent_tokens_per_frame=2, mtp_length=2, num_bins=11,
        head_hidden_size=16, head_layers=2,
    )
    return DreamerConfig(**{**fields, **overrides})


def make_model(cls=DreamerAgentModel, attn: str = "eager", seed: int = 0, **overrides):
    """A small model in eval mode. The zero-initialised reward and value output layers are redrawn
    (tests that need the real initialisation reset them), so that every output carries signal."""
    torch.manual_seed(seed)
    config = small_config(**overrides)
    config._attn_implementation = attn
    model = cls(config).eval()
    if cls is DreamerAgentModel:
        with torch.no_grad():
            for head in (model.reward_head, model.value_head):
                head.out.weight.normal_(std=0.5)
    return model


def make_inputs(batch: int = 2, frames: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(batch, frames, 8, 4, 4, generator=g),
        signal_level=torch.randint(0, 9, (batch, frames), generator=g) / 8,
        step_size=1.0 / 2 ** torch.randint(0, 4, (batch, frames), generator=g).float(),
        actions={
            "move": torch.randint(0, 5, (batch, frames), generator=g),
            "jump": torch.rand(batch, frames, generator=g) > 0.5,
        },
    )


def agent_outputs(out) -> dict[str, torch.Tensor]:
    """Every per-frame output of the agent model, flattened to a name -> (B, T, ...) dict."""
    fields = {
        "latent_pred": out.latent_pred,
        "agent_hidden": out.agent_hidden,
        "reward_logits": out.reward_logits,
        "value_logits": out.value_logits,
    }
    fields.update({f"policy/{k}": v for k, v in out.policy_logits.items()})
    return fields


@torch.no_grad()
def test_output_shapes_follow_design():
    model = make_model()
    out = model(**make_inputs(batch=2, frames=5))
    assert out.latent_pred.shape == (2, 5, 8, 4, 4)
    assert out.agent_hidden.shape == (2, 5, 32)
    assert out.reward_logits.shape == (2, 5, 3, 11)
    assert out.value_logits.shape == (2, 5, 11)
    assert {k: tuple(v.shape) for k, v in out.policy_logits.items()} == {"move": (2, 5, 3, 5), "jump": (2, 5, 3, 1)}
    assert list(out.policy_logits) == list(ACTION_SPACE)
    assert model.reward_bins().shape == (11,)
    assert model.reward_bins()[0] == -5.0 and model.reward_bins()[-1] == 5.0


@torch.no_grad()
def test_patch_size_two_keeps_latent_shape_and_token_count():
    model = make_model(DreamerModel, patch_size=2)
    assert model.config.num_latent_tokens == 4
    latents = make_inputs()["latents"]
    patches = model.embeddings.patchify(latents)
    assert patches.shape == (2, 6, 4, 32)
    # Patch (row 0, col 1) holds channels x rows 0..1 x cols 2..3 of the latent.
    assert torch.equal(patches[0, 0, 1], latents[0, 0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(model._unpatchify(patches), latents)


@torch.no_grad()
def test_dynamics_model_accepts_the_shared_signature():
    model = make_model(DreamerModel)
    out = model(**make_inputs(), task_ids=torch.tensor([0, 1]), independent_frames=torch.tensor([True, False]))
    assert out.latent_pred.shape == (2, 6, 8, 4, 4) and out.agent_states is None


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    inputs = make_inputs()
    with pytest.raises(ValueError, match="latents must be"):
        model(**{**inputs, "latents": inputs["latents"][:, :, :4]})
    with pytest.raises(ValueError, match="signal_level must"):
        model(**{**inputs, "signal_level": inputs["signal_level"] + 2})
    with pytest.raises(ValueError, match="step_size"):
        model(**{**inputs, "step_size": torch.full((2, 6), 1 / 64)})
    with pytest.raises(ValueError, match="independent_frames must be"):
        model(**inputs, independent_frames=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(KeyError, match="jump"):
        model(**{**inputs, "actions": {"move": inputs["actions"]["move"]}})


# --- attention backends and GQA -------------------------------------------------------------


def reference_attention(q, k, v, causal: bool, softcap: float | None) -> torch.Tensor:
    """Per-head float64 loop: query head h reads KV head h // (H / KV)."""
    n, heads, length, dim = q.shape
    groups = heads // k.shape[1]
    out = torch.empty(n, heads, length, dim, dtype=torch.float64)
    for h in range(heads):
        logits = q[:, h].double() @ k[:, h // groups].double().transpose(-1, -2) / dim**0.5
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        if causal:
            logits = logits.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        out[:, h] = torch.softmax(logits, dim=-1) @ v[:, h // groups].double()
    return out


@pytest.mark.parametrize("num_kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "impl,softcap", [("eager", None), ("eager", 2.0), ("sdpa", None), ("flex_attention", None), ("flex_attention", 2.0)]
)
def test_attention_matches_per_head_reference(num_kv, causal, impl, softcap):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 7, 8, generator=g) * 3  # large logits so that the cap matters
    k, v = torch.randn(3, num_kv, 7, 8, generator=g) * 3, torch.randn(3, num_kv, 7, 8, generator=g)
    expected = reference_attention(q, k, v, causal, softcap)
    torch.testing.assert_close(attention(q, k, v, causal, softcap, impl).double(), expected, atol=1e-5, rtol=1e-5)


def test_softcap_changes_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) * 4 for _ in range(3))
    assert not torch.allclose(attention(q, k, v, False, 2.0, "eager"), attention(q, k, v, False, None, "eager"))


@torch.no_grad()
def test_sdpa_matches_eager_without_cap_and_falls_back_to_eager_with_cap():
    inputs = {**make_inputs(), "independent_frames": torch.tensor([True, False])}
    eager = make_model(attn="eager", attn_logit_softcap=None)
    sdpa = make_model(attn="sdpa", attn_logit_softcap=None)
    for name, value in agent_outputs(sdpa(**inputs)).items():
        torch.testing.assert_close(value, agent_outputs(eager(**inputs))[name], atol=1e-5, rtol=1e-5, msg=name)
    capped_eager, capped_sdpa = make_model(attn="eager"), make_model(attn="sdpa")
    assert capped_sdpa.config.attn_logit_softcap == 50.0
    assert torch.equal(capped_sdpa(**inputs).latent_pred, capped_eager(**inputs).latent_pred)


# --- agent firewall, causality, independent frames ------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_agent_firewall_latent_pred_ignores_agent_tokens_and_tasks(attn):
    model = make_model(attn=attn, attn_logit_softcap=None if attn == "sdpa" else 50.0)
    inputs = make_inputs()
    reference = model(**inputs, task_ids=torch.tensor([0, 0]))
    other_task = model(**inputs, task_ids=torch.tensor([[1, 2, 0, 1, 2, 0], [2, 2, 2, 1, 1, 1]]))
    assert torch.equal(reference.latent_pred, other_task.latent_pred)
    assert not torch.equal(reference.agent_hidden, other_task.agent_hidden)  # the task does reach the agent
    model.agent_tokens.slots.normal_(std=5.0)
    model.agent_tokens.task_embed.weight.normal_(std=5.0)
    assert torch.equal(reference.latent_pred, model(**inputs, task_ids=torch.tensor([0, 0])).latent_pred)


def perturb_from(inputs: dict, frame: int, seed: int = 7) -> dict:
    """Copy of ``inputs`` with latents, signal levels, step sizes and actions of frames >= frame redrawn."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(inputs)
    out["latents"][:, frame:] = torch.randn(out["latents"][:, frame:].shape, generator=g)
    out["signal_level"][:, frame:] = torch.rand(out["signal_level"][:, frame:].shape, generator=g).round()
    out["step_size"][:, frame:] = 1.0
    out["actions"]["move"][:, frame:] = (out["actions"]["move"][:, frame:] + 1) % 5
    out["actions"]["jump"][:, frame:] = ~out["actions"]["jump"][:, frame:]
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_time_causality_future_changes_no_past_output(attn):
    """Review item 10: agent (and every other) output at t sees nothing of frames > t."""
    model = make_model(attn=attn, attn_logit_softcap=None if attn == "sdpa" else 50.0)
    inputs = make_inputs(frames=6)
    reference = agent_outputs(model(**inputs))
    for k in (1, 3, 5):
        changed = agent_outputs(model(**perturb_from(inputs, k)))
        for name, value in changed.items():
            assert torch.allclose(value[:, :k], reference[name][:, :k], atol=1e-6, rtol=0), (name, k)
            assert not torch.allclose(value[:, k:], reference[name][:, k:]), (name, k)  # the test can fail


@torch.no_grad()
def test_action_at_t_changes_nothing_up_to_t_and_changes_t_plus_one():
    model = make_model()
    inputs = make_inputs(frames=6)
    reference = agent_outputs(model(**inputs))
    for t in (0, 2, 4):
        changed_inputs = copy.deepcopy(inputs)
        changed_inputs["actions"]["move"][:, t] = (changed_inputs["actions"]["move"][:, t] + 2) % 5
        changed = agent_outputs(model(**changed_inputs))
        for name, value in changed.items():
            assert torch.allclose(value[:, : t + 1], reference[name][:, : t + 1], atol=1e-6, rtol=0), (name, t)
        assert not torch.allclose(changed["latent_pred"][:, t + 1], reference["latent_pred"][:, t + 1])


@torch.no_grad()
def test_unlabeled_actions_use_the_no_action_embedding():
    model = make_model(DreamerModel)
    inputs = make_inputs(frames=4)
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    masked = model(**inputs, action_mask=mask).latent_pred
    changed = copy.deepcopy(inputs)
    changed["actions"]["move"][0, 1] = 4 - changed["actions"]["move"][0, 1]  # the unlabeled action
    changed["actions"]["jump"][0, 1] = ~changed["actions"]["jump"][0, 1]
    assert torch.equal(model(**changed, action_mask=mask).latent_pred, masked)
    assert torch.equal(model(**inputs).latent_pred[1], masked[1])
    assert not torch.allclose(model(**inputs).latent_pred[0, 2], masked[0, 2])
    # Without actions every frame embeds "no action": same as all actions unlabeled.
    no_actions = {k: v for k, v in inputs.items() if k != "actions"}
    torch.testing.assert_close(
        model(**no_actions).latent_pred, model(**inputs, action_mask=torch.zeros(2, 4, dtype=torch.bool)).latent_pred,
        atol=0, rtol=0,
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_independent_frames_isolate_frames_of_flagged_examples_only(attn):
    model = make_model(attn=attn, attn_logit_softcap=None if attn == "sdpa" else 50.0)
    inputs = make_inputs(batch=2, frames=5)
    flag = torch.tensor([True, False])
    reference = agent_outputs(model(**inputs, independent_frames=flag))
    unflagged = agent_outputs(model(**inputs))
    for name in reference:  # example 1 is unaffected by example 0's flag
        assert torch.allclose(reference[name][1], unflagged[name][1], atol=1e-6, rtol=0), name
    for j in range(5):  # redraw every frame of example 0 except frame j
        changed_inputs = perturb_from(inputs, 0, seed=j)
        for key in ("latents", "signal_level", "step_size"):
            changed_inputs[key][:, j] = inputs[key][:, j]
            changed_inputs[key][1] = inputs[key][1]
        for name in ("move", "jump"):
            changed_inputs["actions"][name][1] = inputs["actions"][name][1]
        changed = agent_outputs(model(**changed_inputs, independent_frames=flag))
        for name, value in changed.items():
            assert torch.allclose(value[0, j], reference[name][0, j], atol=1e-6, rtol=0), (name, j)
            assert torch.allclose(value[1], reference[name][1], atol=1e-6, rtol=0), (name, j)
    # A flagged frame equals the same frame run alone as a one-frame video.
    alone = {k: v[:1, 2:3] for k, v in inputs.items() if k != "actions"}
    single = agent_outputs(model(**alone, actions={k: v[:1, 2:3] for k, v in inputs["actions"].items()}))
    for name, value in single.items():
        torch.testing.assert_close(value[0, 0], reference[name][0, 2], atol=1e-5, rtol=1e-5, msg=name)


# --- training behaviour ---------------------------------------------------------------------


def test_gradient_checkpointing_gives_identical_gradients():
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.dreamer.layers)
        out = model(**make_inputs(), independent_frames=torch.tensor([False, True]))
        loss = sum(v.float().square().mean() for v in agent_outputs(out).values())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_reward_and_value_outputs_start_at_zero_and_policy_does_not():
    """Review item 5: one rule for reward and value (zero output layer, DreamerV3)."""
    torch.manual_seed(0)
    model = DreamerAgentModel(small_config())
    for head in (model.reward_head, model.value_head):
        assert torch.count_nonzero(head.out.weight) == 0 and torch.count_nonzero(head.out.bias) == 0
    out = model(**make_inputs())
    assert torch.count_nonzero(out.reward_logits) == 0 and torch.count_nonzero(out.value_logits) == 0
    assert torch.count_nonzero(out.policy_logits["move"]) > 0


def test_every_head_parameter_gets_gradient_within_two_adamw_steps():
    """Review item 5: zero output layers do not block learning. Step 1 trains the output layers
    (dL/dW = h^T dL/dy is nonzero), step 2 reaches the trunk below them."""
    torch.manual_seed(0)
    model = DreamerAgentModel(small_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = make_inputs()
    g = torch.Generator().manual_seed(3)
    reward_target = torch.softmax(torch.randn(2, 6, 3, 11, generator=g), -1)
    value_target = torch.softmax(torch.randn(2, 6, 11, generator=g), -1)
    head_params = {
        n: p for n, p in model.named_parameters() if n.split(".")[0] in ("reward_head", "value_head", "policy_head")
    }
    got_gradient = {n: False for n in head_params}
    for _ in range(2):
        out = model(**inputs)
        loss = -(reward_target * out.reward_logits.log_softmax(-1)).sum(-1).mean()
        loss = loss - (value_target * out.value_logits.log_softmax(-1)).sum(-1).mean()
        loss = loss + torch.nn.functional.cross_entropy(out.policy_logits["move"].flatten(0, 2), inputs["actions"]["move"].repeat_interleave(3))
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
            out.policy_logits["jump"].flatten(), inputs["actions"]["jump"].float().repeat_interleave(3)
        )
        loss.backward()
        for n, p in head_params.items():
            got_gradient[n] |= p.grad is not None and bool(torch.count_nonzero(p.grad))
        optimizer.step()
        optimizer.zero_grad()
    assert all(got_gradient.values()), [n for n, ok in got_gradient.items() if not ok]
    assert any("reward_head.mlp" in n for n in got_gradient)  # the trunk is in the check


def test_all_parameters_are_initialised_finite_and_small():
    torch.manual_seed(0)
    model = DreamerAgentModel(small_config())
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() <= 1.0 + 1e-6, name


def test_model_casts_latents_to_its_dtype():
    model = make_model(DreamerModel).to(torch.float64)
    inputs = make_inputs()
    out = model(**{**inputs, "latents": inputs["latents"].half()})
    assert out.latent_pred.dtype == torch.float64


def test_rotary_embedding_scores_depend_only_on_relative_position():
    from modeling_dreamer.layers import apply_rotary, rotary_tables

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    rotations = rotary_tables(12, 16, 10000.0, torch.device("cpu"))

    def score(i: int, j: int) -> torch.Tensor:
        return apply_rotary(q, rotations[i]) @ apply_rotary(k, rotations[j])

    torch.testing.assert_close(score(3, 1), score(9, 7))
    torch.testing.assert_close(score(0, 0), q @ k)  # position 0 is the identity
    assert not torch.allclose(score(3, 1), score(1, 3))
    torch.testing.assert_close(apply_rotary(q, rotations[5]).norm(), q.norm())


def test_rotary_real_form_used_under_compile_equals_complex_form():
    from modeling_dreamer.layers import rotary_tables, rotate_pairs_complex, rotate_pairs_real

    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16)
    rotations = rotary_tables(7, 16, 10000.0, x.device)
    expected = rotate_pairs_complex(x, rotations)
    torch.testing.assert_close(rotate_pairs_real(x, rotations), expected, atol=1e-6, rtol=1e-6)
    # Independent check of one pair: position 3, pair 1 rotated by 3 * theta^(-2/16).
    angle = 3 * 10000.0 ** (-2 / 16)
    a, b = x[0, 0, 3, 2], x[0, 0, 3, 3]
    torch.testing.assert_close(expected[0, 0, 3, 2:4], torch.stack([a * math.cos(angle) - b * math.sin(angle),
                                                                     a * math.sin(angle) + b * math.cos(angle)]))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """The compiled model (real-arithmetic RoPE, Inductor kernels) computes what the eager model does."""
    from modeling_dreamer import DreamerAgentModel, DreamerConfig

    config = DreamerConfig.from_preset("tiny", latent_channels=4, latent_height=2, latent_width=2, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                       time_every=2, num_register_tokens=2, mtp_length=2, num_bins=9)
    torch.manual_seed(0)
    model = DreamerAgentModel(config).eval()
    latents, tau = torch.randn(2, 3, 4, 2, 2), torch.full((2, 3), 0.5)
    with torch.no_grad():
        eager = model(latents, tau)
        compiled = torch.compile(model)(latents, tau)
    torch.testing.assert_close(compiled.latent_pred, eager.latent_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled.reward_logits, eager.reward_logits, atol=1e-5, rtol=1e-5)
