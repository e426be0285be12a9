"""The coin game behind the gymnasium API: `gymnasium.make("CoinGame-v0")` (registered by `import envs`).

- observation: the latent of the frame, ``Box((C, H, W), float32)`` (default `(8, 4, 4)`), exactly
  `envs.coin_game.CoinGame`'s latent;
- action: ``Dict(movement=Discrete(18), ability_q=MultiBinary(1), ..., recall_b=MultiBinary(1))`` in the
  order of the default action space; by the project's action mapping (`envs.action_mapping`) it is that
  action space exactly: `movement` categorical 18, then the 8 keys binary;
- reward: the game's, `0.01 * gold - 10 * death`, observed at the frame the step produces;
- episodes last `frames` frames (default 300, the dataset's videos): the step producing the last frame
  returns ``truncated=True``. The game has no terminal state (a dead player respawns), so
  ``terminated`` is always False;
- ``render_mode="rgb_array"``: the board as a small RGB image (`render_size`, default 64), for the
  pixel pipeline (`python -m envs.record`): coin gold, player blue with its health bar (hidden while
  dead or flickering, as in the data), enemy red, a gold border on a pickup frame, a red one on a death.

``reset(seed=s)`` plays the same world as ``CoinGame(latent_shape).reset(s)``; ``reset()`` without a seed
draws the world's seed from the env's `np_random`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.coin_game import FPS, HOME, NOISE_SD, CoinGame
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE

# How far the latent noise (sd NOISE_SD) may reach past the noiseless bound: 10 sd, never met in practice
# (a chance below 1e-22 per value), so every observation lies in the observation space.
NOISE_MARGIN = 10 * NOISE_SD


def coin_action_space() -> spaces.Dict:
    """The gymnasium action space of `CoinGame-v0`, in the default action space's order."""
    parts = [(name, spaces.Discrete(spec["n"]) if spec["type"] == "categorical" else spaces.MultiBinary(1))
             for name, spec in DEFAULT_ACTION_SPACE.items()]
    return spaces.Dict(parts)  # a sequence of pairs keeps the order (a plain dict would be sorted)


def to_env_action(actions: Mapping[str, Any]) -> dict[str, Any]:
    """`CoinGame-v0`'s action of ``{component: int | bool}`` (missing components: 0 / False)."""
    action: dict[str, Any] = {}
    for name, spec in DEFAULT_ACTION_SPACE.items():
        value = actions.get(name, 0)
        value = value.item() if hasattr(value, "item") else value
        action[name] = int(value) if spec["type"] == "categorical" else np.array([int(bool(value))], np.int8)
    return action


def from_env_action(action: Mapping[str, Any]) -> dict[str, int | bool]:
    """The game's ``{component: int | bool}`` of a `CoinGame-v0` action (ints, bools or 1-element arrays)."""
    if not isinstance(action, Mapping):
        raise ValueError(f"CoinGame-v0 takes a dict action {{component: value}} (see coin_action_space()), got {action!r}")
    unknown = sorted(set(action) - set(DEFAULT_ACTION_SPACE))
    if unknown:
        raise ValueError(f"CoinGame-v0: unknown action components {unknown}; the components are {list(DEFAULT_ACTION_SPACE)}")
    values: dict[str, int | bool] = {}
    for name, spec in DEFAULT_ACTION_SPACE.items():
        value = np.asarray(action.get(name, 0)).reshape(-1)
        if value.size != 1:
            raise ValueError(f"CoinGame-v0: action component {name!r} must hold one value, got {action[name]!r}")
        values[name] = int(value[0]) if spec["type"] == "categorical" else bool(value[0])
    return values


class BoardPainter:
    """Draws the board of a :class:`CoinGame` state as an RGB image ``(size, size, 3)`` uint8 (y up)."""

    BACKGROUND = (24, 32, 28)
    HOME_COLOUR = (44, 58, 50)
    COIN = (250, 205, 40)
    PLAYER = (70, 150, 255)
    ENEMY = (230, 60, 60)
    BAR = (60, 220, 90)
    BAR_BACK = (110, 30, 30)
    GOLD_FLASH = (250, 205, 40)
    DEATH_FLASH = (230, 60, 60)

    def __init__(self, size: int = 64):
        if size < 16:
            raise ValueError(f"render_size must be at least 16 pixels, got {size}")
        self.size = size
        centres = (np.arange(size) + 0.5) / size
        self.xs, self.ys = np.meshgrid(centres, centres[::-1])  # row 0 is the top of the arena (y = 1)

    def _disc(self, image: np.ndarray, centre: np.ndarray, radius: float, colour: tuple[int, int, int]) -> None:
        image[(self.xs - centre[0]) ** 2 + (self.ys - centre[1]) ** 2 <= radius**2] = colour

    def _rectangle(self, image: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int]) -> None:
        image[(self.xs >= x0) & (self.xs <= x1) & (self.ys >= y0) & (self.ys <= y1)] = colour

    def __call__(self, game: CoinGame) -> np.ndarray:
        image = np.empty((self.size, self.size, 3), np.uint8)
        image[:] = self.BACKGROUND
        self._rectangle(image, HOME[0] - 0.05, HOME[1] - 0.05, HOME[0] + 0.05, HOME[1] + 0.05, self.HOME_COLOUR)
        observation = game.observation
        if observation.coin is not None:
            self._disc(image, observation.coin, 0.035, self.COIN)
        self._disc(image, observation.enemy, 0.045, self.ENEMY)
        if observation.player is not None:
            self._disc(image, observation.player, 0.045, self.PLAYER)
            if game.health_bar_visible:
                x, y = observation.player
                left, bottom, top = x - 0.08, y + 0.065, y + 0.095
                self._rectangle(image, left, bottom, x + 0.08, top, self.BAR_BACK)
                self._rectangle(image, left, bottom, left + 0.16 * observation.health, top, self.BAR)
        border = max(1, self.size // 32)
        flash = self.DEATH_FLASH if observation.death else self.GOLD_FLASH if observation.gold else None
        if flash is not None:
            image[:border], image[-border:], image[:, :border], image[:, -border:] = flash, flash, flash, flash
        return image


class CoinGameEnv(gym.Env):
    """`CoinGame-v0`: :class:`envs.coin_game.CoinGame` as a `gymnasium.Env` (module docstring).

    Arguments: `render_mode` (None or "rgb_array"), `latent_shape` `(C, H, W)` of the observation,
    `frames` per episode (>= 2), `render_size` (pixels of the rendered board's side).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, render_mode: str | None = None, latent_shape: tuple[int, int, int] = (8, 4, 4),
                 frames: int = 300, render_size: int = 64):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"CoinGameEnv: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if int(frames) != frames or frames < 2:
            raise ValueError(f"CoinGameEnv: frames (per episode) must be an integer >= 2, got {frames!r}")
        self.render_mode = render_mode
        self.frames = int(frames)
        self.game = CoinGame(latent_shape)
        self.painter = BoardPainter(render_size)
        bound = self.game.renderer.bound() + NOISE_MARGIN
        self.observation_space = spaces.Box(-bound, bound, self.game.latent_shape, np.float32)
        self.action_space = coin_action_space()
        self._playing = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        world = seed if seed is not None else int(self.np_random.integers(2**32))
        latent, info = self.game.reset(world)
        self._playing = True
        return latent, self._info(info)

    def step(self, action: Mapping[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._playing:
            raise RuntimeError("CoinGameEnv: call reset() before step() (and again after an episode ends)")
        latent, reward, info = self.game.step(from_env_action(action))
        truncated = self.game.frame >= self.frames - 1
        self._playing = not truncated
        return latent, reward, False, truncated, self._info(info)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if not hasattr(self.game, "observation"):
            raise RuntimeError("CoinGameEnv: call reset() before render()")
        return self.painter(self.game)

    @staticmethod
    def _info(info: dict[str, Any]) -> dict[str, Any]:
        # Plain values only: gymnasium's checker compares infos, and vector envs stack them.
        return {key: info[key] for key in ("frame", "gold", "death", "dead", "health_bar_visible")}
