"""Frames of an environment: the image observation if it is one, else `render()` in `rgb_array` mode.

Every frame is resized to the recording's frame size by area averaging (Pillow's `BOX` filter: each
output pixel is the mean of the input pixels it covers, so nothing aliases when shrinking, and fractional
ratios such as 600x400 -> 64x64 are handled). The aspect ratio is not kept: a non-square frame is
stretched to the square (no crop, no padding), so nothing of the picture is lost. `envs.record` and the
agent in `envs.evaluate` share :func:`resize_frame`, so an agent sees its frames as they were recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import Image

RESAMPLING = "area (Pillow Image.Resampling.BOX), stretched to the square: aspect ratio not kept"


def is_image_space(space: spaces.Space) -> bool:
    """Whether observations of `space` are images: a uint8 `Box` of shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W)."""
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    return (len(shape) == 2 and min(shape) > 1) or (len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape[:2]) > 1)


def to_rgb(image: Any, where: str) -> np.ndarray:
    """`image` as an `(H, W, 3)` uint8 array: grey is repeated, an alpha channel dropped."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{where}: expected an (H, W, 3) uint8 image, got {array.dtype} of shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def resize_frame(frame: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """`frame` `(H, W, 3)` uint8 resized to `(height, width, 3)` (`size` an int for a square) by area averaging."""
    height, width = (size, size) if isinstance(size, int) else size
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BOX))


def env_frame(env: Any, observation: Any, source: str, size: int | tuple[int, int]) -> np.ndarray:
    """The current frame of `env` `(height, width, 3)` uint8: `observation` itself when `source` is
    "observation", `env.render()` when it is "render"."""
    if source == "observation":
        image = to_rgb(observation, "observation")
    else:
        rendered = env.render()
        if rendered is None:
            raise ValueError("env.render() returned None: the env was not made with render_mode='rgb_array'")
        image = to_rgb(rendered, "env.render()")
    return resize_frame(image, size)
