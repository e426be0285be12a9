"""The coin game's scripted player: the behaviour in the demo dataset.

It is a decent but imperfect expert, so that behaviour cloning copies its flaws and reinforcement
learning has something to gain (design notes in docs/data.md): it aims 40 degrees counterclockwise of
the coin (a fixed bias: it circles in), takes a neighbouring slice on 20% of its moves, idles on 10% of
the frames a coin is shown, presses `ability_q` on only 30% of the frames the enemy is within reach and
recalls only below 0.1 health.

Two forms of the same decision (:func:`scripted_action`):
- :class:`ScriptedPlayer`, with its own generator, for the game itself (`envs.coin_game.CoinGame`):
  what wrote the dataset and what the evaluation harness compares against;
- :func:`scripted_policy`, the project's policy contract ``policy(env, observation, rng) -> action`` for
  `CoinGame-v0` (``python -m envs.record --policy envs.scripted_player:scripted_policy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.coin_game import Observation, Seed, game_streams, moving_slice, neighbour_slice
from modeling_dreamer.action_space import LOL_BINARY_KEYS as BINARY_KEYS


@dataclass(frozen=True)
class PlayerStyle:
    """How the scripted player plays. The flaws are what behaviour cloning copies and RL can remove."""

    aim_offset_degrees: float = 40.0  # heads this far counterclockwise of the coin (a fixed bias)
    neighbour_chance: float = 0.2  # a move takes a neighbouring slice (half each side)
    idle_chance: float = 0.1  # stands still on a frame a coin is shown
    knock_chance: float = 0.3  # presses ability_q on a frame the enemy is within reach
    knock_reach: float = 0.15  # ... "within reach" as the player judges it
    recall_health: float = 0.1  # recalls below this health ...
    recall_enemy_distance: float = 0.3  # ... when the enemy is at least this far
    random_keys: tuple[tuple[str, float], ...] = (("ability_w", 0.01), ("ability_e", 0.01), ("item_used", 0.005))


def scripted_action(observation: Observation, rng: np.random.Generator, style: PlayerStyle | None = None) -> dict[str, int | bool]:
    """The scripted player's action on one frame: ``{component: int | bool}`` of the default action space.

    A policy of the frame's clean :class:`Observation` alone (no hidden state). It draws the same
    number of values from `rng` on every frame, dead or alive, so its stream stays aligned with the
    frame count whatever happens in the game.
    """
    style = style or PlayerStyle()
    idle, neighbour, side, knock, *key_draws = rng.random(4 + len(style.random_keys))
    actions: dict[str, int | bool] = {"movement": 0, **dict.fromkeys(BINARY_KEYS, False)}
    if observation.player is None:  # dead: nothing to do
        return actions
    enemy_distance = observation.enemy_distance()
    actions["recall_b"] = bool(observation.health < style.recall_health and enemy_distance >= style.recall_enemy_distance)
    actions["ability_q"] = bool(enemy_distance < style.knock_reach and knock < style.knock_chance)
    for (key, chance), draw in zip(style.random_keys, key_draws):
        actions[key] = bool(draw < chance)
    direction = observation.coin_direction()
    if direction is not None and not actions["recall_b"] and idle >= style.idle_chance:
        movement = moving_slice(direction + math.radians(style.aim_offset_degrees))
        if neighbour < style.neighbour_chance:
            movement = neighbour_slice(movement, 1 if side < 0.5 else -1)
        actions["movement"] = movement
    return actions


class ScriptedPlayer:
    """The data's behaviour: :func:`scripted_action` with its own generator.

    ``player.reset(seed)``, then ``player.act(observation) -> {component: int | bool}`` once per frame.
    """

    def __init__(self, style: PlayerStyle | None = None):
        self.style = style or PlayerStyle()
        self._rng = np.random.default_rng(0)

    def reset(self, seed: Seed) -> None:
        self._rng = game_streams(seed, 1)[0]

    def act(self, observation: Observation) -> dict[str, int | bool]:
        return scripted_action(observation, self._rng, self.style)


def scripted_policy(env: Any, observation: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The scripted player as a policy of `CoinGame-v0`: reads the clean state of the unwrapped
    `envs.coin_env.CoinGameEnv` (not the latent `observation`) and returns its gymnasium action."""
    from envs.coin_env import to_env_action

    return to_env_action(scripted_action(env.game.observation, rng))
