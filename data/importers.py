"""Read the user's per-video files (DESIGN.md section 4) into per-frame arrays aligned with latents.

Two inputs per video:
- `<latents_dir>/<video_id>.npz`: `latents (N, C, H, W)` float16, `frame_indices (N,)` ascending.
- `<features_dir>/<video_id>/features.json`: one entry per frame, looked up by `frame_idx`.

Everything is keyed by frame number, never by array position (code review item 7): a frame's
reward, death and actions are read from the features entry whose `frame_idx` equals the latent's
frame number. Rewards and deaths on frames without a latent are carried to the next frame that has
one, so totals are preserved ("nothing lost", DESIGN.md section 4).
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.schema import RewardSpec


class DataError(ValueError):
    """Bad input data. The message names the file and the problem."""


@dataclass
class PackedLatents:
    """One video's latents: `latents (N, C, H, W)` float16, `frame_indices (N,)` int32 ascending."""

    latents: np.ndarray
    frame_indices: np.ndarray


@dataclass
class VideoFeatures:
    """One features.json: the frame entries by frame number, and the header."""

    path: Path
    header: dict
    frames: dict[int, dict]
    first_frame: int
    last_frame: int


@dataclass
class VideoFrames:
    """One video, one entry per frame that has a latent (arrays of length N, in frame order).

    `actions[name]` is int64 for categorical components and bool for binary ones; `has_action` is
    False on frames without a features entry (their actions are unknown, not zero).
    """

    video_id: str
    frame_index: np.ndarray  # (N,) int32
    latents: np.ndarray  # (N, C, H, W) float16
    reward: np.ndarray  # (N,) float32
    death: np.ndarray  # (N,) bool
    actions: dict[str, np.ndarray]
    has_action: np.ndarray  # (N,) bool
    stats: dict = field(default_factory=dict)


def load_packed_latents(path: str | Path, expected_shape: tuple[int, int, int] | None = None) -> PackedLatents:
    """Read and validate `<video_id>.npz`; raise DataError naming `path` on any problem.

    `expected_shape` is the `(C, H, W)` every video must have (declared by the user or taken from
    the first video). Latents are returned as float16 whatever float type the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: latents file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"latents", "frame_indices"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {sorted(missing)} (found {sorted(npz.files)})")
            latents, frame_indices = npz["latents"], npz["frame_indices"]
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as error:
        raise DataError(f"{path}: cannot read packed latents (corrupt or not an .npz file: {error})") from error

    if latents.ndim != 4:
        raise DataError(f"{path}: latents must have shape (N, C, H, W), got {latents.shape}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise DataError(f"{path}: latents must be floating point, got dtype {latents.dtype}")
    if expected_shape is not None and tuple(latents.shape[1:]) != tuple(expected_shape):
        raise DataError(
            f"{path}: latent shape mismatch: frames are {tuple(latents.shape[1:])}, expected {tuple(expected_shape)}"
        )
    if frame_indices.ndim != 1 or not np.issubdtype(frame_indices.dtype, np.integer):
        raise DataError(f"{path}: frame_indices must be a 1-D integer array, got {frame_indices.dtype} {frame_indices.shape}")
    if len(frame_indices) != len(latents):
        raise DataError(f"{path}: {len(latents)} latents but {len(frame_indices)} frame_indices")
    if len(frame_indices) == 0:
        raise DataError(f"{path}: no frames")
    if frame_indices.min() < 0:
        raise DataError(f"{path}: negative frame index {int(frame_indices.min())}")
    steps = np.diff(frame_indices.astype(np.int64))
    if (steps == 0).any():
        i = int(np.argmax(steps == 0))
        raise DataError(f"{path}: duplicate frame index {int(frame_indices[i])} at positions {i} and {i + 1}")
    if (steps < 0).any():
        i = int(np.argmax(steps < 0))
        raise DataError(
            f"{path}: frame_indices not sorted: frame {int(frame_indices[i])} at position {i} "
            f"is followed by frame {int(frame_indices[i + 1])}"
        )

    latents = latents.astype(np.float16, copy=False)
    finite = np.isfinite(latents.reshape(len(latents), -1)).all(axis=1)
    if not finite.all():
        bad = frame_indices[~finite]
        raise DataError(
            f"{path}: latents contain NaN or inf on {len(bad)} frame(s), first at frame {int(bad[0])}"
        )
    return PackedLatents(latents=latents, frame_indices=frame_indices.astype(np.int32))


def load_features(path: str | Path) -> VideoFeatures:
    """Read and validate one features.json; raise DataError naming `path` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: features file not found")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("frames"), list):
        raise DataError(f"{path}: expected a JSON object with a 'frames' list")

    frames: dict[int, dict] = {}
    for position, frame in enumerate(document["frames"]):
        index = frame.get("frame_idx") if isinstance(frame, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DataError(f"{path}: frames[{position}] has no valid 'frame_idx' (got {index!r})")
        if index in frames:
            raise DataError(f"{path}: duplicate frame_idx {index} (frames[{position}])")
        frames[index] = frame
    if not frames:
        raise DataError(f"{path}: 'frames' is empty")
    header = {key: value for key, value in document.items() if key != "frames"}
    return VideoFeatures(path=path, header=header, frames=frames, first_frame=min(frames), last_frame=max(frames))


def death_onsets_from_health_bar(bar_visible: np.ndarray, min_frames: int) -> np.ndarray:
    """Death onsets from health-bar visibility (DESIGN.md section 4).

    `bar_visible`: `(G,)` bool over consecutive frame numbers. Returns `(G,)` bool, True at each
    frame t where the bar was visible at t-1 and stays absent for at least `min_frames` frames from
    t: one event per death, flicker shorter than `min_frames` ignored. An absence at the very
    start (nothing seen before it) or cut short by the end of the video is not a death.
    """
    absent = ~np.asarray(bar_visible, bool)
    onsets = np.zeros(len(absent), bool)
    starts = np.flatnonzero(absent[1:] & ~absent[:-1]) + 1
    if len(starts) == 0:
        return onsets
    # The absent run starting at s ends at the first visible frame after s (or the end).
    visible_after = np.flatnonzero(~absent)
    ends = np.searchsorted(visible_after, starts)
    run_end = np.where(ends < len(visible_after), visible_after[np.minimum(ends, len(visible_after) - 1)], len(absent))
    onsets[starts[(run_end - starts) >= min_frames]] = True
    return onsets


def death_onsets_from_is_dead(is_dead: np.ndarray) -> np.ndarray:
    """`(G,)` bool: True at each false -> true transition of `is_dead` (not at frame 0)."""
    is_dead = np.asarray(is_dead, bool)
    onsets = np.zeros(len(is_dead), bool)
    onsets[1:] = is_dead[1:] & ~is_dead[:-1]
    return onsets


def _forward_fill(values: np.ndarray, known: np.ndarray, initial: bool) -> np.ndarray:
    """Replace unknown entries of a bool array by the last known value (`initial` before any)."""
    last_known = np.maximum.accumulate(np.where(known, np.arange(len(values)), -1))
    return np.where(last_known >= 0, values[np.maximum(last_known, 0)], initial)


def _number(frame: dict, key: str, path: Path, missing: Counter) -> float:
    value = frame.get(key)
    if value is None:
        missing[key] += 1
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: frame {frame['frame_idx']}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def import_video(
    video_id: str,
    latents_path: str | Path,
    features_path: str | Path,
    action_space: dict[str, dict],
    action_keys: dict[str, str],
    reward_spec: RewardSpec,
    expected_shape: tuple[int, int, int] | None = None,
) -> VideoFrames:
    """Join one video's latents and features by frame number.

    Steps: lay the features over the grid of frame numbers `first_frame..last_frame`; detect deaths
    (`is_dead` transitions if the file has that key, the health-bar rule otherwise); compute the
    reward per frame; carry reward and death events of frames without a latent to the next frame
    with one (or the last one); read actions where the features entry exists.
    """
    packed = load_packed_latents(latents_path, expected_shape)
    features = load_features(features_path)
    path = features.path
    first, last = features.first_frame, features.last_frame
    frame_index = packed.frame_indices
    outside = (frame_index < first) | (frame_index > last)
    if outside.any():
        bad = frame_index[outside]
        raise DataError(
            f"{latents_path}: latents for {len(bad)} frame(s) the features do not cover "
            f"(frames {int(bad.min())}..{int(bad.max())}; {path} covers {first}..{last})"
        )

    size = last - first + 1
    has_entry = np.zeros(size, bool)
    gold = np.zeros(size)
    bar_visible, bar_known = np.ones(size, bool), np.zeros(size, bool)
    is_dead, is_dead_known = np.zeros(size, bool), np.zeros(size, bool)
    uses_is_dead = any("is_dead" in frame for frame in features.frames.values())
    actions_grid = {
        name: np.zeros(size, np.int64 if spec["type"] == "categorical" else bool) for name, spec in action_space.items()
    }
    missing: Counter = Counter()

    for index, frame in features.frames.items():
        g = index - first
        has_entry[g] = True
        gold[g] = _number(frame, "gold_gained", path, missing)
        # Health bar: null means "no bar seen"; a missing key means "unknown" (state carried over).
        bar_keys = [key for key in ("health_bar_x", "health_bar_y") if key in frame]
        if bar_keys:
            bar_known[g] = True
            bar_visible[g] = all(frame[key] is not None for key in bar_keys)
        else:
            missing["health_bar_x"] += 1
        if uses_is_dead:
            if frame.get("is_dead") is None:
                missing["is_dead"] += 1
            else:
                is_dead_known[g] = True
                is_dead[g] = bool(frame["is_dead"])
        for name, spec in action_space.items():
            key = action_keys[name]
            value = frame.get(key)
            if value is None:
                missing[key] += 1
            elif spec["type"] == "categorical":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < spec["n"]:
                    raise DataError(f"{path}: frame {index}: '{key}' must be an integer in 0..{spec['n'] - 1}, got {value!r}")
                actions_grid[name][g] = value
            else:
                actions_grid[name][g] = bool(value)

    bar_visible = _forward_fill(bar_visible, bar_known, initial=True)
    health_bar_deaths = death_onsets_from_health_bar(bar_visible, reward_spec.death_min_frames)
    if uses_is_dead:
        deaths = death_onsets_from_is_dead(_forward_fill(is_dead, is_dead_known, initial=False))
    else:
        deaths = health_bar_deaths

    # Carry: every frame number maps to the next latent row at or after it (the last row if none).
    rows = len(frame_index)
    grid_frames = np.arange(first, last + 1)
    target_row = np.minimum(np.searchsorted(frame_index, grid_frames, side="left"), rows - 1)
    has_latent = np.zeros(size, bool)
    has_latent[frame_index - first] = True
    events = (gold != 0) | deaths
    reward_grid = reward_spec.reward(gold, deaths)
    reward = np.zeros(rows)
    np.add.at(reward, target_row[events], reward_grid[events])
    death_count = np.zeros(rows, np.int64)
    np.add.at(death_count, target_row[deaths], 1)
    carried = events & ~has_latent

    positions = frame_index - first
    stats = {
        "frames": rows,
        "feature_frames": int(has_entry.sum()),
        "gaps": int((np.diff(frame_index) > 1).sum()),
        "frames_without_latent": int(size - rows),
        "frames_without_features": int((~has_entry[positions]).sum()),
        "actions_lost_without_latent": int((has_entry & ~has_latent).sum()),
        "death_rule": "is_dead" if uses_is_dead else "health_bar",
        "deaths": int(deaths.sum()),
        "health_bar_deaths": int(health_bar_deaths.sum()),
        "carried_events": int(carried.sum()),
        "carried_reward": float(reward_grid[carried].sum()),
        "carried_deaths": int((carried & deaths).sum()),
        "merged_deaths": int(np.maximum(death_count - 1, 0).sum()),
        "reward_total": float(reward_grid.sum()),
        "gold_events": int((gold != 0).sum()),
        "missing_keys": dict(missing),
        "header_video_id": features.header.get("video_id"),
    }
    return VideoFrames(
        video_id=video_id,
        frame_index=frame_index,
        latents=packed.latents,
        reward=reward.astype(np.float32),
        death=death_count > 0,
        actions={name: grid[positions] for name, grid in actions_grid.items()},
        has_action=has_entry[positions],
        stats=stats,
    )


def find_videos(latents_dir: str | Path, features_dir: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Pair `<latents_dir>/<id>.npz` with `<features_dir>/<id>/features.json`.

    Returns `(paired, without_features, without_latents)`, each a sorted list of video ids.
    """
    latents_dir, features_dir = Path(latents_dir), Path(features_dir)
    for folder, what in ((latents_dir, "latents"), (features_dir, "features")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} directory not found")
    latent_ids = {path.stem for path in latents_dir.glob("*.npz")}
    feature_ids = {path.parent.name for path in features_dir.glob("*/features.json")}
    return (
        sorted(latent_ids & feature_ids),
        sorted(latent_ids - feature_ids),
        sorted(feature_ids - latent_ids),
    )
