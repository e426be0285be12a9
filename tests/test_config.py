"""DreamerConfig: presets, defaults, validation and JSON round trip."""

from __future__ import annotations

import json

import pytest

from modeling_dreamer import DreamerConfig
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE


@pytest.mark.parametrize(
    "name,width,depth", [("tiny", 256, 6), ("small", 512, 12), ("medium", 768, 18), ("large", 1024, 24)]
)
def test_presets_have_the_issue_widths_and_depths(name, width, depth):
    config = DreamerConfig.from_preset(name, num_tasks=4)
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (width, depth, 64)
    assert config.num_attention_heads == 2 * config.num_key_value_heads
    assert config.num_tasks == 4 and config.k_max == 64 and config.mtp_length == 8


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="huge.*large"):
        DreamerConfig.from_preset("huge")


def test_defaults_follow_design():
    config = DreamerConfig()
    assert (config.latent_channels, config.latent_height, config.latent_width) == (32, 16, 16)
    assert config.action_space == DEFAULT_ACTION_SPACE and list(config.action_space)[0] == "movement"
    assert config.attn_logit_softcapping == 50.0 and config.time_every == 4 and config.num_bins == 255
    assert config.num_agent_tokens == 1 and config.architectures == []
    assert config.time_layer_indices == [3]
    assert DreamerConfig(num_hidden_layers=8, time_every=2).time_layer_indices == [1, 3, 5, 7]
    assert config.num_latent_tokens == 256 and DreamerConfig(patch_size=2).num_latent_tokens == 64
    assert DreamerConfig(attn_logit_softcapping=0).attn_logit_softcapping is None


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"patch_size": 3}, "patch_size"),
        ({"num_attention_heads": 3}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"k_max": 48}, "k_max"),
        ({"bins_low": 1.0, "bins_high": -1.0}, "bins"),
        ({"action_space": {"move": {"type": "categorical", "n": 1}}}, "'move'.*'n': int >= 2"),
        ({"action_space": {"move": {"type": "continuous"}}}, "'move'.*expected.*binary.*categorical"),
        ({"action_space": {"a.b": {"type": "binary"}}}, "name 'a.b' is invalid"),
    ],
)
def test_inconsistent_fields_raise_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        DreamerConfig(**fields)


def test_json_round_trip_keeps_fields_and_action_order(tmp_path):
    space = {"z_last": {"type": "binary"}, "a_first": {"type": "categorical", "n": 3}}
    config = DreamerConfig(action_space=space, num_tasks=2, bins_low=-3.0, attn_logit_softcapping=None)
    config.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert list(on_disk["action_space"]) == ["z_last", "a_first"] and on_disk["model_type"] == "dreamer"
    loaded = DreamerConfig.from_pretrained(tmp_path)
    assert list(loaded.action_space) == ["z_last", "a_first"] and loaded.action_space == space
    assert (loaded.num_tasks, loaded.bins_low, loaded.attn_logit_softcapping) == (2, -3.0, None)
    assert loaded.intermediate_size == config.intermediate_size


def test_former_field_names_are_accepted_and_alias_the_new_ones():
    config = DreamerConfig(attn_logit_softcap=30.0, agent_tokens_per_frame=4)
    assert (config.attn_logit_softcapping, config.num_agent_tokens) == (30.0, 4)
    assert DreamerConfig(attn_logit_softcap=0).attn_logit_softcapping is None
    config.agent_tokens_per_frame = 2  # writes through to the new field
    assert config.num_agent_tokens == 2 and config.attn_logit_softcap == 30.0
    on_disk = config.to_dict()
    assert "agent_tokens_per_frame" not in on_disk and on_disk["num_agent_tokens"] == 2
    with pytest.raises(ValueError, match="num_agent_tokens must be >= 1"):
        DreamerConfig(agent_tokens_per_frame=0)
