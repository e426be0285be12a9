"""Making an environment by id, and checking that it qualifies for recording and evaluation.

An environment qualifies when it is
1. registered with gymnasium (`CoinGame-v0` by `import envs`; ``module:EnvId`` imports `module` first,
   e.g. ``ale_py:ALE/Pong-v5``),
2. of discrete actions: `Discrete`, `MultiDiscrete`, `MultiBinary`, or a `Dict` / `Tuple` of them
   (`envs.action_mapping`), and
3. seen in frames: its observations are images (uint8 `(H, W, 3)`, `(H, W, 1)`, `(H, W)`), or it renders
   in `rgb_array` mode (needed only where frames are, not for a policy evaluation).
Each failure raises a `ValueError` naming the env id and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

import envs  # noqa: F401  (registers CoinGame-v0)
from envs.action_mapping import ActionMapping
from envs.frames import is_image_space


@dataclass
class OpenedEnv:
    """A made env with its action mapping and where its frames come from ("observation", "render" or
    None when frames were not asked for)."""

    env: gym.Env
    env_id: str
    mapping: ActionMapping
    frame_source: str | None

    def close(self) -> None:
        self.env.close()


def _make(env_id: str, argument: str, **kwargs: Any) -> gym.Env:
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as error:
        raise ValueError(f"{argument} {env_id!r}: {error}") from None
    except ModuleNotFoundError as error:
        raise ValueError(f"{argument} {env_id!r}: {error}") from None
    except TypeError as error:  # unknown keyword arguments of the env's constructor
        raise ValueError(f"{argument} {env_id!r}: making it with {kwargs} failed: {error}") from None


def open_env(env_id: str, frames: bool = True, env_kwargs: dict[str, Any] | None = None, argument: str = "--env") -> OpenedEnv:
    """Make `env_id` and check it qualifies; with `frames`, also decide where its frames come from.

    An env whose observations are not images is made again with ``render_mode="rgb_array"`` when it
    declares that mode, so a policy evaluation (``frames=False``) never pays for rendering.
    """
    kwargs = dict(env_kwargs or {})
    env = _make(env_id, argument, **kwargs)
    try:
        mapping = ActionMapping(env.action_space)
    except ValueError as error:
        env.close()
        raise ValueError(f"{argument} {env_id!r}: {error}") from None
    if not frames:
        return OpenedEnv(env, env_id, mapping, None)
    if is_image_space(env.observation_space):
        return OpenedEnv(env, env_id, mapping, "observation")
    render_modes = list(env.metadata.get("render_modes", []))
    env.close()
    if "rgb_array" not in render_modes:
        raise ValueError(f"{argument} {env_id!r}: no frames to record: its observations are not images "
                         f"({env.observation_space}) and it has no rgb_array rendering (render modes {render_modes})")
    return OpenedEnv(_make(env_id, argument, **{**kwargs, "render_mode": "rgb_array"}), env_id, mapping, "render")
