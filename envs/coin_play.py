"""Playing whole episodes of the coin game, and the seeds of the demo's episodes.

The seed scheme keeps the dataset and the evaluation apart: video `number` of a dataset generated with
`seed` plays the game seeded ``(seed, number, 0)`` (scripted player ``(seed, number, 1)``); evaluation
episode `i` plays ``(seed, i, 2)`` (``(seed, i, 3)``), never a dataset video's world.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.coin_game import CoinGame, Observation, Seed
from envs.scripted_player import ScriptedPlayer
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE

# policy(latent (C, H, W), observation of the same frame) -> {component: int | bool}
FramePolicy = Callable[[np.ndarray, Observation], Mapping[str, Any]]


@dataclass
class Episode:
    """One played episode, per-frame arrays of length F (frame t: what t shows, the actions taken at t)."""

    latents: np.ndarray  # (F, C, H, W) float16
    reward: np.ndarray  # (F,) float64, observed at t (0 at frame 0)
    gold: np.ndarray  # (F,) int
    death: np.ndarray  # (F,) bool, death onset
    dead: np.ndarray  # (F,) bool
    bar_visible: np.ndarray  # (F,) bool
    player: np.ndarray  # (F, 2), the last living position while dead
    actions: dict[str, np.ndarray] = field(default_factory=dict)  # (F,) per component

    @property
    def total_reward(self) -> float:
        return float(self.reward.sum())


def play_episode(game: CoinGame, policy: FramePolicy, seed: Seed, frames: int) -> Episode:
    """Play `frames` frames from `game.reset(seed)`: the policy sees frame t and acts; the game steps.

    `policy(latent, observation)` gets both the latent and the clean observation of the frame; the
    scripted player reads the observation, a learned agent only the latent. The action chosen at the
    last frame is recorded but not played (the episode ends there).
    """
    latent, info = game.reset(seed)
    rows: dict[str, list] = {name: [] for name in ("latents", "reward", "gold", "death", "dead", "bar_visible", "player")}
    actions: dict[str, list] = {name: [] for name in DEFAULT_ACTION_SPACE}
    reward = 0.0
    for t in range(frames):
        rows["latents"].append(latent.astype(np.float16))
        rows["reward"].append(reward)
        rows["gold"].append(info["gold"])
        rows["death"].append(info["death"])
        rows["dead"].append(info["dead"])
        rows["bar_visible"].append(info["health_bar_visible"])
        rows["player"].append(game.player.copy())
        chosen = policy(latent, info["observation"])
        for name in actions:
            actions[name].append(chosen.get(name, 0))
        if t + 1 < frames:
            latent, reward, info = game.step(chosen)
    return Episode(
        latents=np.stack(rows["latents"]),
        reward=np.array(rows["reward"], np.float64),
        gold=np.array(rows["gold"], np.int64),
        death=np.array(rows["death"], bool),
        dead=np.array(rows["dead"], bool),
        bar_visible=np.array(rows["bar_visible"], bool),
        player=np.stack(rows["player"]),
        actions={
            name: np.array(values, np.int64 if spec["type"] == "categorical" else bool)
            for (name, values), spec in zip(actions.items(), DEFAULT_ACTION_SPACE.values())
        },
    )


def video_seeds(seed: int, number: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(game seed, scripted player seed) of video `number` of the dataset generated with `seed`."""
    return (seed, number, 0), (seed, number, 1)


def evaluation_seeds(seed: int, episode: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(game seed, scripted player seed) of evaluation episode `episode`: disjoint from every dataset video."""
    return (seed, episode, 2), (seed, episode, 3)


def scripted_frame_policy(player: ScriptedPlayer) -> FramePolicy:
    """The scripted player as a :data:`FramePolicy` (it reads the observation, not the latent)."""
    return lambda latent, observation: player.act(observation)


def play_scripted(game_seed: Seed, player_seed: Seed, frames: int, latent_shape: tuple[int, int, int]) -> Episode:
    """The scripted player (seeded `player_seed`) playing `frames` frames of the game seeded `game_seed`."""
    player = ScriptedPlayer()
    player.reset(player_seed)
    return play_episode(CoinGame(latent_shape), scripted_frame_policy(player), game_seed, frames)


def record_video(seed: int, number: int, frames: int, latent_shape: tuple[int, int, int]) -> Episode:
    """Video `number` of the dataset generated with `seed`: the scripted player playing :class:`CoinGame`."""
    return play_scripted(*video_seeds(seed, number), frames, latent_shape)
