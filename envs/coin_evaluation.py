"""The demo's policy evaluation in the coin game: true returns on paired seeds, batched over episodes.

A policy here sees the game's latents (no tokenizer in between), as the demo's agents were trained on
them: ``evaluate_policy(policy, episodes, frames, seed, batched=True)`` runs all episodes side by side
(one `DreamerAgent` call per frame for the whole batch) and plays the scripted player on the same game
seeds for the paired comparison. For any gymnasium environment from pixels, see `envs.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.coin_game import CoinGame
from envs.coin_play import evaluation_seeds, play_scripted
from envs.pairing import paired_difference
from envs.scripted_player import ScriptedPlayer
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE


@dataclass
class PolicyEvaluation:
    """True returns per episode (the sum of the game's rewards over the episode's frames), paired by seed.

    `movement_agreement` is the share of the policy's frames (player alive) on which its movement
    equals the scripted player's choice on the same observation: the game-side counterpart of the
    held-out behaviour-cloning top-1 (the scripted player's own randomness included).
    """

    returns: np.ndarray  # (episodes,) the evaluated policy
    gold: np.ndarray  # (episodes,) gold it collected
    deaths: np.ndarray  # (episodes,) its deaths
    movement_agreement: np.ndarray  # (episodes,)
    scripted_returns: np.ndarray  # (episodes,) the scripted player on the same game seeds
    scripted_gold: np.ndarray
    scripted_deaths: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over episodes, and the mean and standard error of the paired difference to the scripted player."""
        difference, stderr = paired_difference(self.returns, self.scripted_returns)
        return {
            "episodes": len(self.returns),
            "return": float(self.returns.mean()),
            "scripted_return": float(self.scripted_returns.mean()),
            "paired_difference": difference,
            "paired_difference_stderr": math.nan if stderr is None else stderr,
            "gold": float(self.gold.mean()),
            "scripted_gold": float(self.scripted_gold.mean()),
            "deaths": float(self.deaths.mean()),
            "scripted_deaths": float(self.scripted_deaths.mean()),
            "movement_agreement": float(self.movement_agreement.mean()),
        }


def _as_action(value: Any, spec: dict[str, Any]) -> int | bool:
    value = value.item() if hasattr(value, "item") else value
    return int(value) if spec["type"] == "categorical" else bool(value)


def evaluate_policy(
    policy: Any,
    episodes: int = 20,
    frames: int = 300,
    seed: int = 0,
    latent_shape: tuple[int, int, int] = (8, 4, 4),
    batched: bool = False,
) -> PolicyEvaluation:
    """Play `episodes` episodes of `frames` frames with `policy`, and the scripted player on the same seeds.

    `policy` is a callable or an object with `act` (and optionally `reset()`, called at the start of
    each episode, or once when `batched`). Unbatched, it gets each frame's latent `(C, H, W)` float32
    numpy and returns `{component: int | bool}` (0-d arrays and tensors are accepted; missing
    components are 0 / False). With `batched=True` all episodes run side by side: it gets
    `(episodes, C, H, W)` and returns `{component: (episodes,)}`, e.g. a `DreamerAgent` reset with
    `batch_size=episodes` acting on `torch.from_numpy(latents)`. Episode i uses the same game seed
    for the policy and the scripted player (:func:`evaluation_seeds`: never a dataset video's seed).
    A return sums the rewards of frames 0..frames-1 (frame 0 has none): `frames - 1` actions count.
    """
    act = policy.act if hasattr(policy, "act") else policy
    seeds = [evaluation_seeds(seed, episode) for episode in range(episodes)]
    scripted = [play_scripted(game_seed, player_seed, frames, latent_shape) for game_seed, player_seed in seeds]

    games = [CoinGame(latent_shape) for _ in seeds]
    # The scripted player's choice on the policy's own observations (its draws do not touch the game).
    shadows = [ScriptedPlayer() for _ in seeds]
    rewards = np.zeros((episodes, frames))
    gold = np.zeros((episodes, frames), np.int64)
    deaths = np.zeros((episodes, frames), bool)
    agree = np.zeros((episodes, frames), bool)
    alive = np.zeros((episodes, frames), bool)

    def start(episode: int) -> tuple[np.ndarray, dict[str, Any]]:
        game_seed, player_seed = seeds[episode]
        shadows[episode].reset(player_seed)
        return games[episode].reset(game_seed)

    def advance(episode: int, t: int, chosen: Mapping[str, Any], info: dict[str, Any]):
        actions = {name: _as_action(chosen[name], spec) for name, spec in DEFAULT_ACTION_SPACE.items() if name in chosen}
        expected = shadows[episode].act(info["observation"])
        alive[episode, t] = not info["dead"]
        agree[episode, t] = alive[episode, t] and actions.get("movement", 0) == expected["movement"]
        if t + 1 == frames:
            return None, info
        latent, rewards[episode, t + 1], info = games[episode].step(actions)
        gold[episode, t + 1], deaths[episode, t + 1] = info["gold"], info["death"]
        return latent, info

    if batched:
        if hasattr(policy, "reset"):
            policy.reset()
        latents, infos = map(list, zip(*(start(episode) for episode in range(episodes))))
        for t in range(frames):
            chosen = act(np.stack(latents))
            for episode in range(episodes):
                latents[episode], infos[episode] = advance(
                    episode, t, {name: values[episode] for name, values in chosen.items()}, infos[episode]
                )
    else:
        for episode in range(episodes):
            if hasattr(policy, "reset"):
                policy.reset()
            latent, info = start(episode)
            for t in range(frames):
                latent, info = advance(episode, t, act(latent), info)
    return PolicyEvaluation(
        returns=rewards.sum(1),
        gold=gold.sum(1),
        deaths=deaths.sum(1),
        movement_agreement=agree.sum(1) / np.maximum(alive.sum(1), 1),
        scripted_returns=np.array([episode.total_reward for episode in scripted]),
        scripted_gold=np.array([episode.gold.sum() for episode in scripted]),
        scripted_deaths=np.array([episode.death.sum() for episode in scripted]),
    )
