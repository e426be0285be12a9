"""`latent_position_embeddings`: a learned embedding per latent-token position, added to the latent tokens so
the agent tokens can read where something is in the frame (docs/model.md). Off by default; on, the firewall and
time causality hold bitwise and the model saves and loads with it."""

from __future__ import annotations

import json

import torch

from modeling_dreamer import DreamerAgentModel, DreamerConfig


def agent_model(make_config, **overrides) -> DreamerAgentModel:
    torch.manual_seed(0)
    return DreamerAgentModel._from_config(make_config(**overrides), attn_implementation="eager").eval()


def test_off_by_default_and_an_older_config_loads_without_it(make_config) -> None:
    assert DreamerConfig().latent_position_embeddings is False
    config = make_config().to_dict()
    del config["latent_position_embeddings"]  # a config saved before the field existed
    assert DreamerConfig.from_dict(config).latent_position_embeddings is False
    assert agent_model(make_config).dreamer.embeddings.latent_positions is None


@torch.no_grad()
def test_each_latent_token_gets_its_positions_row(make_config) -> None:
    model = agent_model(make_config, latent_position_embeddings=True)
    embeddings = model.dreamer.embeddings
    n = model.config.num_latent_tokens
    assert embeddings.latent_positions.shape == (n, model.config.hidden_size)
    assert embeddings.latent_positions.std() > 0  # initialised, not left at zero
    x = torch.randn(2, 3, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    level = torch.full((2, 3), 0.5)
    tokens = embeddings(x, level, None, None, None, None)
    expected = embeddings.latent_proj(embeddings.patchify(x)) + embeddings.latent_positions  # row i to token i
    torch.testing.assert_close(tokens[:, :, :n], expected, rtol=0, atol=0)
    # The same content at two positions now enters as two different tokens.
    same = torch.zeros_like(x)
    tokens = embeddings(same, level, None, None, None, None)
    assert not torch.equal(tokens[:, :, 0], tokens[:, :, 1])


@torch.no_grad()
def test_with_positions_the_firewall_and_causality_hold_bitwise(make_config) -> None:
    model = agent_model(make_config, latent_position_embeddings=True)
    x = torch.randn(2, 5, 8, 4, 4, generator=torch.Generator().manual_seed(2))
    level = torch.full((2, 5), 0.5)
    a = model(x, level, task_ids=torch.tensor([0, 1]))
    b = model(x, level, task_ids=torch.tensor([2, 2]))
    assert torch.equal(a.latent_pred, b.latent_pred)  # agent tokens and tasks never reach the latents
    later = x.clone()
    later[:, 3:] += 1.0
    c = model(later, level, task_ids=torch.tensor([0, 1]))
    assert torch.equal(c.latent_pred[:, :3], a.latent_pred[:, :3])
    assert torch.equal(c.agent_hidden[:, :3], a.agent_hidden[:, :3])


def test_saved_and_loaded_with_the_positions(make_config, tmp_path) -> None:
    model = agent_model(make_config, latent_position_embeddings=True)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["latent_position_embeddings"] is True
    loaded = DreamerAgentModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.dreamer.embeddings.latent_positions, model.dreamer.embeddings.latent_positions)
