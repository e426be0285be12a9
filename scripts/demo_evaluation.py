"""Evaluations of the demo's models beyond the held-out metrics of `train.py`:

- `generation_error`: the phase-1 world model generates the next frame of held-out windows (KV cache + the
  K-step shortcut sampler) and is scored against the true next frame, beside the baseline that copies the
  last frame;
- `play`: a trained agent (`DreamerAgent`) plays the steppable synthetic game on paired seeds, for its true
  return and how often its movement equals the scripted player's on the same observations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def generation_error(model_dir: Path, dataset: Path, context: int = 8, num_steps: int = 4, windows: int = 64,
                     seed: int = 0) -> dict[str, float]:
    """Mean squared error of generated next frames against the true ones, on the validation split.

    Each held-out window of `context + 1` frames: the first `context` frames are committed with their actions
    (the action at the last context frame is the one that leads to the target frame), the next frame is
    generated with `num_steps` sampler steps. Returns the generated frames' MSE and the MSE of copying the last
    context frame."""
    from data.schema import load_prepared
    from data.windows import WindowDataset, collate_windows
    from modeling_dreamer import DreamerModel
    from modeling_dreamer.modeling_dreamer import add_noise

    model = DreamerModel.from_pretrained(model_dir).eval()
    config = model.config
    split = load_prepared(dataset)[0]["validation"]
    data = WindowDataset(split, context + 1)
    batch = collate_windows([data[i] for i in range(min(windows, len(data)))])
    latents = batch["latents"].float()
    actions = {name: batch[name] for name in config.action_space}
    generator = torch.Generator().manual_seed(seed)
    observed = latents[:, :context]
    noise = torch.randn(observed.shape, generator=generator)
    level = torch.full(observed.shape[:2], config.context_tau)
    cache = model(add_noise(observed, level, noise), level,
                  torch.full_like(level, 1.0 / config.k_max), actions={k: v[:, :context] for k, v in actions.items()},
                  action_mask=batch["has_action"][:, :context], use_cache=True).past_key_values
    generated = model.generate_frame(cache, num_steps, generator)
    target = latents[:, context]
    return {
        "generated_mse": float((generated - target).square().mean()),
        "copy_last_frame_mse": float((observed[:, -1] - target).square().mean()),
        "windows": int(latents.shape[0]),
        "num_steps": num_steps,
        "context_frames": context,
    }


class BatchedAgent:
    """The game's batched policy interface for a `DreamerAgent`: one stream per episode."""

    def __init__(self, agent: Any, episodes: int, greedy: bool = False) -> None:
        self.agent, self.episodes, self.greedy = agent, episodes, greedy

    def reset(self) -> None:
        self.agent.reset(batch_size=self.episodes)

    def act(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        actions = self.agent.act(torch.from_numpy(latents).float(), greedy=self.greedy)
        return {name: value.cpu().numpy() for name, value in actions.items()}


@torch.no_grad()
def play(model_dir: Path, episodes: int = 24, frames: int = 300, seed: int = 0, greedy: bool = False) -> dict[str, float]:
    """The agent's true return in the steppable game (mean over episodes; the scripted player on the same game
    seeds beside it), and its movement agreement with the scripted player."""
    from envs.coin_evaluation import evaluate_policy
    from modeling_dreamer import DreamerAgent

    agent = DreamerAgent.from_pretrained(model_dir, seed=seed)
    config = agent.model.config
    shape = (config.latent_channels, config.latent_height, config.latent_width)
    result = evaluate_policy(BatchedAgent(agent, episodes, greedy), episodes=episodes, frames=frames, seed=seed,
                             latent_shape=shape, batched=True)
    return {**result.summary(), "returns": result.returns.tolist(), "gold_per_episode": result.gold.tolist(),
            "deaths_per_episode": result.deaths.tolist()}
