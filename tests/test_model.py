"""Behaviour of the Dreamer model: shapes, attention backends, firewall, causality, independent
frames, GQA, input checks, gradient checkpointing, RoPE, mixed precision and head initialisation
(zero reward and value outputs; the agent tokens are initialised, not left as loaded garbage)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from model_helpers import agent_outputs, make_inputs
from torch import nn

from modeling_dreamer import DreamerAgentModel, DreamerModel
from modeling_dreamer.attention import (
    get_attention_function,
    resolve_attn_implementation,
    time_attention_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ACTION_SPACE = {"move": {"type": "categorical", "n": 5}, "jump": {"type": "binary"}}
# Every backend with the settings it runs exactly: sdpa cannot apply the soft cap.
BACKENDS = [("eager", 50.0), ("sdpa", None), ("flex_attention", 50.0), ("auto", 50.0)]


@pytest.fixture
def make_model(make_config):
    """``make_model(cls, attn, seed, **overrides)``: a small model in eval mode. The zero-initialised
    reward and value output layers are redrawn (tests that need the real initialisation build the
    model themselves), so that every output carries signal."""

    def build(cls=DreamerAgentModel, attn: str = "eager", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        config = make_config(**overrides)
        config._attn_implementation = attn
        model = cls(config).eval()
        if cls is DreamerAgentModel:
            with torch.no_grad():
                for head in (model.reward_head, model.value_head):
                    head.out.weight.normal_(std=0.5)
        return model

    return build


@torch.no_grad()
def test_output_shapes_follow_design(make_model):
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
    assert model.agent_tokens.slots.shape == (2, 32)  # num_agent_tokens = 2


@torch.no_grad()
def test_patch_size_two_keeps_latent_shape_and_token_count(make_model):
    model = make_model(DreamerModel, patch_size=2)
    assert model.config.num_latent_tokens == 4
    latents = make_inputs()["latents"]
    patches = model.embeddings.patchify(latents)
    assert patches.shape == (2, 6, 4, 32)
    # Patch (row 0, col 1) holds channels x rows 0..1 x cols 2..3 of the latent.
    assert torch.equal(patches[0, 0, 1], latents[0, 0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(model._unpatchify(patches), latents)


@torch.no_grad()
def test_dynamics_model_accepts_the_shared_signature(make_model):
    model = make_model(DreamerModel)
    out = model(**make_inputs(), task_ids=torch.tensor([0, 1]), independent_frames=torch.tensor([True, False]))
    assert out.latent_pred.shape == (2, 6, 8, 4, 4) and out.agent_states is None


def test_action_tables_and_policy_outputs_are_sized_by_the_action_space(make_model):
    model = make_model()
    tables = model.dreamer.embeddings.actions.components
    assert (tables["move"].num_embeddings, tables["jump"].num_embeddings) == (5, 2)
    assert (model.policy_head.out["move"].out_features, model.policy_head.out["jump"].out_features) == (3 * 5, 3 * 1)


# --- input checks ---------------------------------------------------------------------------


def _replace(inputs: dict, **changes) -> dict:
    out = {**inputs, "actions": dict(inputs["actions"])}
    for key, value in changes.items():
        if key.startswith("actions_"):
            out["actions"][key.removeprefix("actions_")] = value
        else:
            out[key] = value
    return out


BAD_INPUTS = {
    # name: (changes to make_inputs(batch=2, frames=6), expected message)
    "latent shape": (lambda i: {"latents": i["latents"][:, :, :4]}, r"latents must have shape \(B, T, 8, 4, 4\)"),
    "signal_level shape": (lambda i: {"signal_level": i["signal_level"][:, :5]}, r"signal_level must have shape"),
    "signal_level above 1": (lambda i: {"signal_level": i["signal_level"] + 2}, r"signal_level must lie in \[0, 1\]"),
    "signal_level below 0": (lambda i: {"signal_level": i["signal_level"] - 1}, r"signal_level must lie in \[0, 1\]"),
    "signal_level off grid": (lambda i: {"signal_level": torch.full((2, 6), 0.3)}, r"signal_level .* grid k / K_max"),
    "signal_level NaN": (lambda i: {"signal_level": torch.full((2, 6), float("nan"))}, r"signal_level must lie"),
    "step_size too fine": (lambda i: {"step_size": torch.full((2, 6), 1 / 64)}, r"step_size must be 1/K for K in 1, 2, 4, \.\.\., 8"),
    "step_size off grid": (lambda i: {"step_size": torch.full((2, 6), 0.26)}, r"step_size must be 1/K"),
    "step_size above 1": (lambda i: {"step_size": torch.full((2, 6), 2.0)}, r"step_size must be 1/K"),
    "step_size shape": (lambda i: {"step_size": torch.ones(2)}, r"step_size must have shape"),
    "actions batch 1 broadcast": (
        lambda i: {"actions_move": i["actions"]["move"][:1]}, r"actions\['move'\] must have shape \(B, T\) = \(2, 6\), got \(1, 6\)"
    ),
    "actions transposed": (lambda i: {"actions_jump": torch.zeros(6, 2, dtype=torch.bool)}, r"actions\['jump'\] must have shape"),
    "categorical out of range": (
        lambda i: {"actions_move": torch.full((2, 6), 5)}, r"actions\['move'\] \(categorical\) must hold class indices in \[0, 5\)"
    ),
    "categorical negative": (lambda i: {"actions_move": torch.full((2, 6), -1)}, r"actions\['move'\] .* \[0, 5\)"),
    "categorical float": (lambda i: {"actions_move": i["actions"]["move"].float()}, r"actions\['move'\] is categorical .* integer"),
    "binary not 0/1": (lambda i: {"actions_jump": torch.full((2, 6), 2)}, r"actions\['jump'\] \(binary\) must hold bool or 0/1"),
    "binary probability": (lambda i: {"actions_jump": torch.full((2, 6), 0.7)}, r"actions\['jump'\] \(binary\)"),
    "missing component": (lambda i: {"actions": {"move": i["actions"]["move"]}}, r"actions has components \['move'\].*missing \['jump'\]"),
    "action_mask shape": (lambda i: {"action_mask": torch.ones(2, 5, dtype=torch.bool)}, r"action_mask must have shape"),
    "action_mask values": (lambda i: {"action_mask": torch.full((2, 6), 3)}, r"action_mask must be bool or 0/1"),
    "task_ids range": (lambda i: {"task_ids": torch.tensor([0, 3])}, r"task_ids must lie in \[0, num_tasks = 3\)"),
    "task_ids negative": (lambda i: {"task_ids": torch.full((2, 6), -1)}, r"task_ids must lie in"),
    "task_ids shape": (lambda i: {"task_ids": torch.zeros(3, dtype=torch.long)}, r"task_ids must have shape"),
    "task_ids float": (lambda i: {"task_ids": torch.zeros(2)}, r"task_ids must be integers"),
    "independent_frames shape": (lambda i: {"independent_frames": torch.ones(2, 6, dtype=torch.bool)}, r"independent_frames must have shape \(B,\)"),
    "independent_frames values": (lambda i: {"independent_frames": torch.tensor([0, 2])}, r"independent_frames must be bool or 0/1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_invalid_inputs_raise_value_errors_naming_the_argument(make_model, case):
    model = make_model()
    inputs = make_inputs()
    changes, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        model(**_replace(inputs, **changes(inputs)))


@torch.no_grad()
def test_valid_edge_inputs_are_accepted_and_unlabeled_actions_may_hold_anything(make_model):
    model = make_model()
    inputs = make_inputs(frames=4)
    reference = model(**inputs).latent_pred
    # Grid values within the stated tolerance are rounded to the grid: same output.
    nudged = _replace(inputs, signal_level=inputs["signal_level"] + 1e-5, step_size=inputs["step_size"] * (1 + 1e-5))
    assert torch.equal(model(**nudged).latent_pred, reference)
    # 0/1 integers and bools are the same binary action.
    as_int = _replace(inputs, actions_jump=inputs["actions"]["jump"].long())
    assert torch.equal(model(**as_int).latent_pred, reference)
    # Unlabeled entries are not checked (e.g. -1 as "missing").
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    move = inputs["actions"]["move"].clone()
    move[~mask] = -1
    jump = inputs["actions"]["jump"].long()
    jump[~mask] = 7
    model(**_replace(inputs, actions_move=move, actions_jump=jump), action_mask=mask)
    model(**inputs, task_ids=torch.tensor([[0, 1, 2, 2], [2, 1, 0, 0]]), independent_frames=torch.tensor([1, 0]))


def test_fused_asynchronous_check_trips_on_a_bad_value(make_model):
    """The CUDA path (one flag through torch._assert_async, no host sync); on CPU the assertion
    raises at once, which shows that the fused flag is computed right."""
    model = make_model()
    inputs = make_inputs()
    model.validate_inputs(**inputs, synchronous=False)  # valid: nothing raised
    bad = _replace(inputs, actions_move=torch.full((2, 6), 9))
    with pytest.raises(RuntimeError):
        model.validate_inputs(**bad, synchronous=False)
    with pytest.raises(ValueError, match=r"actions\['move'\]"):
        model.validate_inputs(**bad, synchronous=True)


# --- attention functions and backends -------------------------------------------------------


def reference_attention(q, k, v, mask: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    """Per-head float64 loop: query head h reads KV head h // (H / KV). Returns (N, Lq, H, Dh)."""
    n, heads, q_len, dim = q.shape
    groups = heads // k.shape[1]
    out = torch.empty(n, heads, q_len, dim, dtype=torch.float64)
    for h in range(heads):
        logits = q[:, h].double() @ k[:, h // groups].double().transpose(-1, -2) / dim**0.5
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        out[:, h] = torch.softmax(logits, dim=-1) @ v[:, h // groups].double()
    return out.transpose(1, 2)


class _Module(nn.Module):
    """What transformers' attention functions read from the calling module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = False


MASKS = {
    # name: (q_len, kv_len, q_offset, kv_offset, window, hand-written mask: may query i read key j?)
    "none": (7, 7, 0, 0, None, None),
    "causal": (7, 7, 0, 0, None, lambda i, j: j <= i),
    "cached step": (1, 6, 5, 0, None, lambda i, j: j <= i + 5),  # one new frame against a cache
    "cached step, window 3": (1, 6, 5, 0, 3, lambda i, j: 5 + i - 3 < j <= 5 + i),
    "window 2, shifted cache": (3, 5, 4, 2, 2, lambda i, j: 4 + i - 2 < 2 + j <= 4 + i),
}


def _function_cases() -> list[tuple[str, float | None, str, int]]:
    """(implementation, softcap, mask, KV heads of 4 query heads): the fast functions over the whole
    grid; flex (uncompiled on CPU, ~0.5 s a call with a mask) over each mask once and each head layout once."""
    cases = [
        (impl, cap, mask, kv)
        for impl, cap in [("eager", None), ("eager", 2.0), ("sdpa", None)]
        for mask in sorted(MASKS)
        for kv in (4, 2, 1)
    ]
    cases += [("flex_attention", 2.0, mask, 2) for mask in sorted(MASKS)]
    cases += [("flex_attention", None, "none", kv) for kv in (4, 1)] + [("flex_attention", None, "causal", 1)]
    return cases


@pytest.mark.parametrize("impl,softcap,mask_name,num_kv", _function_cases())
def test_attention_functions_match_per_head_reference(num_kv, mask_name, impl, softcap):
    q_len, kv_len, q_offset, kv_offset, window, allowed = MASKS[mask_name]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, q_len, 8, generator=g) * 3  # large logits so that the cap matters
    k, v = torch.randn(3, num_kv, kv_len, 8, generator=g) * 3, torch.randn(3, num_kv, kv_len, 8, generator=g)
    if allowed is None:
        expected_mask = mask = None
    else:
        expected_mask = torch.tensor([[allowed(i, j) for j in range(kv_len)] for i in range(q_len)])
        mask = time_attention_mask(impl, q_len, kv_len, q.device, q_offset, kv_offset, window)
        if impl != "flex_attention":
            assert torch.equal(mask, expected_mask[None, None])
    out, _ = get_attention_function(impl)(_Module(4 // num_kv), q, k, v, mask, scaling=8**-0.5, dropout=0.0, softcap=softcap)
    assert out.shape == (3, q_len, 4, 8)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, expected_mask, softcap), atol=1e-5, rtol=1e-5)


def test_softcap_changes_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) * 4 for _ in range(3))
    eager = get_attention_function("eager")
    capped, _ = eager(_Module(1), q, k, v, None, softcap=2.0)
    uncapped, _ = eager(_Module(1), q, k, v, None, softcap=None)
    assert not torch.allclose(capped, uncapped)


def test_backend_that_cannot_apply_the_soft_cap_is_refused(make_config):
    """sdpa has no soft cap: asking for it with a cap raises (at build time and, if the config is
    changed afterwards, at run time) instead of computing attention without the cap."""
    config = make_config(attn_logit_softcapping=50.0)
    config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match=r"'sdpa' cannot apply the attention logit soft cap \(attn_logit_softcapping=50.0\)"):
        DreamerModel(config)
    model = DreamerModel(make_config(attn_logit_softcapping=None))
    model.config._attn_implementation = "sdpa"
    model(**make_inputs())  # no cap: fine
    model.config.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="cannot apply the attention logit soft cap"):
        model(**make_inputs())
    capped = DreamerModel(make_config(attn_logit_softcapping=50.0))
    with pytest.raises(ValueError, match="cannot apply"):
        capped.set_attn_implementation("sdpa")
    assert capped.config._attn_implementation == "auto"


def test_auto_attention_picks_an_exact_path_per_device(make_config):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert resolve_attn_implementation("auto", cuda, 50.0) == "flex_attention"
    assert resolve_attn_implementation("auto", cuda, None) == "sdpa"
    assert resolve_attn_implementation("auto", cpu, 50.0) == "eager"
    assert resolve_attn_implementation("auto", cpu, None) == "sdpa"
    assert resolve_attn_implementation(None, cpu, 50.0) == "eager"
    assert resolve_attn_implementation("flex_attention", cpu, 50.0) == "flex_attention"  # asked for: kept
    # Unset -> "auto"; an explicit choice is kept; an unknown one is refused.
    assert DreamerModel(make_config()).config._attn_implementation == "auto"
    config = make_config()
    config._attn_implementation = "eager"
    assert DreamerModel(config).config._attn_implementation == "eager"
    config._attn_implementation = "no_such_attention"
    with pytest.raises(ValueError, match="no_such_attention"):
        DreamerModel(config)


@pytest.mark.parametrize("attn,softcap", [("sdpa", None), ("flex_attention", 50.0), ("flex_attention", None), ("auto", 50.0)])
@torch.no_grad()
def test_backends_match_eager_at_model_level(make_model, attn, softcap):
    inputs = {**make_inputs(), "independent_frames": torch.tensor([True, False])}
    expected = agent_outputs(make_model(attn="eager", attn_logit_softcapping=softcap)(**inputs))
    got = agent_outputs(make_model(attn=attn, attn_logit_softcapping=softcap)(**inputs))
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-5, msg=name)


# --- agent firewall, causality, independent frames ------------------------------------------


@pytest.mark.parametrize("attn,softcap", BACKENDS)
@torch.no_grad()
def test_agent_firewall_latent_pred_ignores_agent_tokens_and_tasks(make_model, attn, softcap):
    model = make_model(attn=attn, attn_logit_softcapping=softcap)
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


@pytest.mark.parametrize("attn,softcap", BACKENDS)
@torch.no_grad()
def test_time_causality_future_changes_no_past_output(make_model, attn, softcap):
    """Review item 10: agent (and every other) output at t sees nothing of frames > t."""
    model = make_model(attn=attn, attn_logit_softcapping=softcap)
    inputs = make_inputs(frames=6)
    reference = agent_outputs(model(**inputs))
    for k in (1, 3, 5):
        changed = agent_outputs(model(**perturb_from(inputs, k)))
        for name, value in changed.items():
            assert torch.allclose(value[:, :k], reference[name][:, :k], atol=1e-6, rtol=0), (name, k)
            assert not torch.allclose(value[:, k:], reference[name][:, k:]), (name, k)  # the test can fail


@torch.no_grad()
def test_action_at_t_changes_nothing_up_to_t_and_changes_t_plus_one(make_model):
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
def test_unlabeled_actions_use_the_no_action_embedding(make_model):
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


@pytest.mark.parametrize("attn,softcap", BACKENDS)
@torch.no_grad()
def test_independent_frames_isolate_frames_of_flagged_examples_only(make_model, attn, softcap):
    model = make_model(attn=attn, attn_logit_softcapping=softcap)
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


# `gradient_checkpointing_enable` exists in every transformers 5.x; from 5.23 it is the deprecated
# alias of `activation_checkpointing_enable` (absent before 5.23) and warns (docs/model.md).
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing_enable.*deprecated:FutureWarning")
def test_gradient_checkpointing_gives_identical_gradients(make_model):
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.dreamer.layers)
        out = model(**make_inputs(), independent_frames=torch.tensor([False, True]))
        loss = sum(v.float().square().mean() for v in agent_outputs(out).values())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_reward_and_value_outputs_start_at_zero_and_policy_does_not(make_config):
    """Review item 5: one rule for reward and value (zero output layer, DreamerV3)."""
    torch.manual_seed(0)
    model = DreamerAgentModel(make_config())
    for head in (model.reward_head, model.value_head):
        assert torch.count_nonzero(head.out.weight) == 0 and torch.count_nonzero(head.out.bias) == 0
    out = model(**make_inputs())
    assert torch.count_nonzero(out.reward_logits) == 0 and torch.count_nonzero(out.value_logits) == 0
    assert torch.count_nonzero(out.policy_logits["move"]) > 0


def test_every_head_parameter_gets_gradient_within_two_adamw_steps(make_config):
    """Review item 5: zero output layers do not block learning. Step 1 trains the output layers
    (dL/dW = h^T dL/dy is nonzero), step 2 reaches the trunk below them."""
    torch.manual_seed(0)
    model = DreamerAgentModel(make_config()).train()
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


def test_all_parameters_are_initialised_finite_and_small(make_config):
    torch.manual_seed(0)
    model = DreamerAgentModel(make_config())
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() <= 1.0 + 1e-6, name


def test_model_casts_latents_to_its_dtype(make_model):
    model = make_model(DreamerModel).to(torch.float64)
    inputs = make_inputs()
    out = model(**{**inputs, "latents": inputs["latents"].half()})
    assert out.latent_pred.dtype == torch.float64


# --- RoPE, precision, what compilers and FSDP2 need ------------------------------------------


def test_rotary_embedding_matches_a_complex_number_reference():
    from modeling_dreamer.layers import apply_rotary, rotary_tables

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=g, dtype=torch.float64)
    cos, sin = rotary_tables(7, 16, 10000.0, torch.device("cpu"), offset=2)
    got = apply_rotary(x, cos, sin)
    # Reference: pair i of position p is the complex number x[2i] + 1j x[2i+1] times exp(1j * p * theta^(-2i/16)).
    positions = torch.arange(2, 9, dtype=torch.float64)[:, None]
    angles = positions * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    pairs = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.exp(1j * angles)
    expected = torch.stack([pairs.real, pairs.imag], dim=-1).flatten(-2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)  # tables are float32
    # One pair by hand: position 3 (offset 2 + index 1), pair 1 rotated by 3 * theta^(-2/16).
    angle = 3 * 10000.0 ** (-2 / 16)
    a, b = x[0, 0, 1, 2].item(), x[0, 0, 1, 3].item()
    torch.testing.assert_close(got[0, 0, 1, 2:4], torch.tensor([a * math.cos(angle) - b * math.sin(angle),
                                                                a * math.sin(angle) + b * math.cos(angle)], dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)
    # Scores depend only on relative positions; position 0 is the identity.
    q, k = x[0, 0, 0], x[0, 0, 1]
    cos, sin = rotary_tables(12, 16, 10000.0, torch.device("cpu"))

    def score(i: int, j: int) -> torch.Tensor:
        return apply_rotary(q, cos[i], sin[i]) @ apply_rotary(k, cos[j], sin[j])

    torch.testing.assert_close(score(3, 1), score(9, 7), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(0, 0), q @ k, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(score(3, 1), score(1, 3))


@torch.no_grad()
def test_forward_runs_no_complex_operation(make_model):
    """Inductor has no complex kernels: nothing in the forward may produce a complex tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ComplexSpy(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.is_complex():
                    self.ops.append(str(func))
            return out

    model = make_model()
    with ComplexSpy() as spy:
        model(**make_inputs())
    assert spy.ops == []


def test_rms_norm_under_bf16_autocast_is_fused_and_matches_fp32():
    from modeling_dreamer.layers import DreamerRMSNorm

    torch.manual_seed(0)
    norm = DreamerRMSNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 64) * 3
    expected = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * norm.weight
    with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        got = norm(x.bfloat16())
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
    assert got.dtype == torch.bfloat16 and norm.weight.dtype == torch.float32  # master weight stays fp32
    torch.testing.assert_close(got.float(), expected.detach(), atol=0.05, rtol=0.01)


@torch.no_grad()
def test_model_under_bf16_autocast_warns_nothing_and_matches_fp32(make_model):
    model = make_model()
    inputs = make_inputs(frames=3)
    expected = agent_outputs(model(**inputs))
    with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        got = agent_outputs(model(**inputs))
    assert not [str(w.message) for w in caught if "Mismatch dtype" in str(w.message)]
    for name, value in got.items():
        scale = expected[name].abs().max()
        torch.testing.assert_close(value.float(), expected[name], atol=0.03 * float(scale), rtol=0.03, msg=name)


def test_input_embeddings_and_fsdp_wrap_policy_for_accelerate(make_model):
    """What Accelerate's FSDP2 preparation calls: get_input_embeddings (its own shard unit), the
    transformer wrap policy from `_no_split_modules`, the final norm under `base_model_prefix`."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import _find_final_norm, fsdp2_prepare_auto_wrap_policy

    agent, backbone = make_model(), make_model(DreamerModel)
    assert agent.get_input_embeddings() is agent.dreamer.embeddings
    assert backbone.get_input_embeddings() is backbone.embeddings
    assert agent.get_output_embeddings() is None  # nothing tied
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(agent)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, agent)
    wrapped = [name for name, module in agent.named_modules() if policy(module)]
    assert wrapped == [f"dreamer.layers.{i}" for i in range(4)]
    assert _find_final_norm(agent) is agent.dreamer.norm


@pytest.mark.slow
def test_torch_compile_matches_eager(make_config):
    """The compiled model (real-arithmetic RoPE, Inductor kernels) computes what the eager model does."""
    config = make_config(latent_channels=4, latent_height=2, latent_width=2, num_hidden_layers=2)
    torch.manual_seed(0)
    model = DreamerAgentModel(config).eval()
    latents, tau = torch.randn(2, 3, 4, 2, 2), torch.full((2, 3), 0.5)
    with torch.no_grad():
        eager = model(latents, tau)
        compiled = torch.compile(model)(latents, tau)
    torch.testing.assert_close(compiled.latent_pred, eager.latent_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled.reward_logits, eager.reward_logits, atol=1e-5, rtol=1e-5)


def test_accelerate_fsdp2_preparation_shards_the_model_on_one_cpu_process(make_config):
    """Accelerate's own FSDP2 preparation on a one-process gloo group: the units it carves out, and
    a forward/backward through the sharded model equal to the plain model's."""
    import socket
    from types import SimpleNamespace

    import torch.distributed as dist
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import FSDPModule

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DreamerAgentModel(make_config())
        reference = DreamerAgentModel(make_config())
        reference.load_state_dict(model.state_dict())
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
        # The attributes of an Accelerator that fsdp2_prepare_model reads (Accelerate itself
        # refuses FSDP on CPU, so its helper is called directly).
        accelerator = SimpleNamespace(
            state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no", is_main_process=True,
            torch_device_mesh=None, device=torch.device("cpu"),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            sharded = fsdp2_prepare_model(accelerator, model)
            units = [name for name, module in sharded.named_modules() if isinstance(module, FSDPModule)]
            assert units == ["", "dreamer.embeddings"] + [f"dreamer.layers.{i}" for i in range(4)] + ["dreamer.norm"]
            losses = []
            for net in (sharded, reference):
                out = net(**make_inputs())
                loss = sum(v.float().square().mean() for v in agent_outputs(out).values())
                loss.backward()
                losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-6)
        sharded_grads = dict(sharded.named_parameters())
        for name, param in reference.named_parameters():
            grad = sharded_grads[name].grad
            torch.testing.assert_close(grad.full_tensor(), param.grad, atol=1e-6, rtol=1e-5, msg=name)
    finally:
        dist.destroy_process_group()
