"""A trained agent playing a gymnasium env from pixels: tokenizer + `DreamerAgent`, a batch of envs in lockstep.

Each observed frame is resized as in recording (`envs.frames.resize_frame`, to the tokenizer's image size),
encoded by the tokenizer one frame at a time (its cache holds the earlier frames: causal, frame by frame),
and the action comes from the KV-cached `DreamerAgent.act()`, mapped to the env's action by
`envs.action_mapping.ActionMapping`.

Why lockstep: one agent (and one tokenizer) cache holds a batch of streams that all advance by one frame
per call, and a stream cannot be restarted inside it. So a batch of B episodes starts together and steps
together; an episode that has ended keeps being fed its last frame (its actions are ignored) until the
longest one ends. For fixed-length episodes (the coin game) nothing is wasted; for episodes of very
different lengths the cost is B x the longest episode, still far cheaper than B episodes one by one
when the model's per-call cost dominates (measured in docs/environments.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.action_mapping import ActionMapping
from envs.frames import env_frame


class AgentPlayer:
    """Loads an agent (`DreamerAgentModel` folder) and its tokenizer (`DreamerTokenizer` folder) and plays.

    Checks on load, each a `ValueError` naming both folders: the tokenizer's latent shape is the agent's, the
    tokenizer is the one whose latents the agent was trained on (`DreamerAgent.check_tokenizer`), and the agent's
    action space is the env's (`mapping.action_space`, names, kinds and class counts).
    """

    def __init__(self, agent_dir: str | Path, tokenizer_dir: str | Path, mapping: ActionMapping,
                 device: str | torch.device | None = None, greedy: bool = False, temperature: float = 1.0):
        from modeling_dreamer import DreamerAgent, DreamerTokenizer

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.agent = DreamerAgent.from_pretrained(agent_dir)
        self.agent.model.to(device)
        self.tokenizer = DreamerTokenizer.from_pretrained(tokenizer_dir).to(device).eval()
        self.mapping, self.greedy, self.temperature, self.device = mapping, greedy, temperature, device
        config, tokenizer_config = self.agent.model.config, self.tokenizer.config
        agent_shape = (config.latent_channels, config.latent_height, config.latent_width)
        if tuple(tokenizer_config.latent_shape) != agent_shape:
            raise ValueError(f"--tokenizer {tokenizer_dir} makes latents {tuple(tokenizer_config.latent_shape)}, but --agent "
                             f"{agent_dir} reads {agent_shape}")
        try:  # the same latent shape is not enough: another tokenizer's latents mean something else to the agent
            self.agent.check_tokenizer(self.tokenizer)
        except ValueError as error:
            raise ValueError(f"--agent {agent_dir} with --tokenizer {tokenizer_dir}: {error}") from error
        if dict(config.action_space) != mapping.action_space:
            raise ValueError(f"--agent {agent_dir} acts in {dict(config.action_space)}, but the env's actions map to "
                             f"{mapping.action_space} (docs/environments.md, action mapping)")
        self.frame_size = (tokenizer_config.image_height, tokenizer_config.image_width)

    @torch.no_grad()
    def play(self, envs: list[Any], seeds: list[int], frame_source: str, max_steps: int | None = None,
             agent_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Play one episode in each of `envs` (reset with `seeds`) in lockstep; returns (returns, lengths), `(B,)`.

        An episode ends when its env says `terminated` or `truncated`, or after `max_steps` steps, and is never
        stepped again. The agent's observation noise and action sampling draw from one generator seeded
        `agent_seed` for the whole batch, so an episode's play depends on the batch it was in.
        """
        batch = len(envs)
        observations = [env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)]
        frames = np.stack([env_frame(env, obs, frame_source, self.frame_size) for env, obs in zip(envs, observations)])
        self.agent.reset(batch_size=batch, seed=agent_seed)
        cache = self.tokenizer.new_cache()
        returns, lengths = np.zeros(batch), np.zeros(batch, np.int64)
        active = np.ones(batch, bool)
        while active.any():
            pixels = torch.from_numpy(frames).to(self.device)[:, None]  # (B, 1, H, W, 3) uint8
            latents = self.tokenizer.encode(pixels, past_key_values=cache)[:, 0]  # (B, C, H, W)
            actions = self.agent.act(latents, greedy=self.greedy, temperature=self.temperature)
            env_actions = self.mapping.to_env_batch(actions)
            for i in np.flatnonzero(active):
                observation, reward, terminated, truncated, _ = envs[i].step(env_actions[i])
                returns[i] += float(reward)
                lengths[i] += 1
                if terminated or truncated or (max_steps is not None and lengths[i] >= max_steps):
                    active[i] = False  # its last frame stays in `frames`: fed on, its actions ignored
                else:
                    frames[i] = env_frame(envs[i], observation, frame_source, self.frame_size)
        return returns, lengths
