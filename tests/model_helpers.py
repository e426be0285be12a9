"""Shared helpers of the model tests (tests/test_model.py, tests/test_model_hf.py): inputs for the
small models of ``conftest.SMALL_MODEL_FIELDS`` and a flat view of the agent model's outputs."""

from __future__ import annotations

import torch


def make_inputs(batch: int = 2, frames: int = 6, seed: int = 1) -> dict:
    """Random valid inputs for latents (8, 4, 4), K_max = 8 and the action space
    ``{"move": categorical 5, "jump": binary}``."""
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
