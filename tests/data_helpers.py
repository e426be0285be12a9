"""Shared helpers for the data-layer tests: fixture location and checks against truth files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest


def fixtures_dir() -> Path:
    """The real-match fixtures folder (`shared/fixtures` beside the clone), or $DREAMER_FIXTURES; skip the test if
    absent."""
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"]
    if os.environ.get("DREAMER_FIXTURES"):
        candidates.insert(0, Path(os.environ["DREAMER_FIXTURES"]))
    for candidate in candidates:
        if (candidate / "lol_real").is_dir():
            return candidate
    pytest.skip(f"real-data fixtures not found (looked in {[str(c) for c in candidates]}; set DREAMER_FIXTURES)")


# The default of `data.prepare --max-carry-frames`.
MAX_CARRY_FRAMES = 3


def event_fates(truth: dict, frame_index, max_carry_frames: int = MAX_CARRY_FRAMES) -> dict[int, tuple[str, int | None]]:
    """Where each event of a truth file must end up, worked out frame by frame from the rule in
    docs/data.md (independently of `data.importers.carry_events`).

    An event is a frame with a gold event or a death onset (both on one frame: one event). Returns
    `{frame: (fate, row)}`: `("on_frame", row)`, `("carried", row)` (the next latent frame, when the
    run of missing frames holding it is at most `max_carry_frames` long), or `("before" | "after" |
    "long_gap", None)` for a dropped event.
    """
    latent = sorted(int(f) for f in frame_index)
    position = {frame: row for row, frame in enumerate(latent)}
    frames = sorted({int(f) for f in truth["gold_events"]} | {int(f) for f in truth["death_onsets"]})
    fates: dict[int, tuple[str, int | None]] = {}
    for frame in frames:
        if frame in position:
            fates[frame] = ("on_frame", position[frame])
        elif frame < latent[0]:
            fates[frame] = ("before", None)
        elif frame > latent[-1]:
            fates[frame] = ("after", None)
        else:
            previous = max(f for f in latent if f < frame)
            following = min(f for f in latent if f > frame)
            missing = following - previous - 1
            fates[frame] = ("carried", position[following]) if missing <= max_carry_frames else ("long_gap", None)
    return fates


def event_rewards(truth: dict, gold_scale: float = 0.01, death_penalty: float = -10.0) -> dict[int, tuple[float, int]]:
    """`{frame: (reward, deaths)}` of every event frame of a truth file."""
    events: dict[int, tuple[float, int]] = {}
    for frame, gold in truth["gold_events"].items():
        reward, deaths = events.get(int(frame), (0.0, 0))
        events[int(frame)] = (reward + gold_scale * gold, deaths)
    for frame in truth["death_onsets"]:
        reward, deaths = events.get(int(frame), (0.0, 0))
        events[int(frame)] = (reward + death_penalty, deaths + 1)
    return events


def expected_rewards(
    truth: dict, frame_index: np.ndarray, gold_scale: float = 0.01, death_penalty: float = -10.0,
    max_carry_frames: int = MAX_CARRY_FRAMES,
):
    """Rewards and death flags per latent frame, computed from a truth file alone.

    Events on frames without a latent go to the next latent frame across a gap of at most
    `max_carry_frames` missing frames; the others are dropped (`expected_drops`).
    """
    rewards = np.zeros(len(frame_index))
    deaths = np.zeros(len(frame_index), bool)
    values = event_rewards(truth, gold_scale, death_penalty)
    for frame, (_, row) in event_fates(truth, frame_index, max_carry_frames).items():
        if row is not None:
            rewards[row] += values[frame][0]
            deaths[row] |= values[frame][1] > 0
    return rewards, deaths


def expected_drops(
    truth: dict, frame_index: np.ndarray, gold_scale: float = 0.01, death_penalty: float = -10.0,
    max_carry_frames: int = MAX_CARRY_FRAMES,
) -> dict[str, dict]:
    """`{fate: {"events", "reward", "deaths"}}` for every fate of `event_fates` (zeros where none)."""
    totals = {fate: {"events": 0, "reward": 0.0, "deaths": 0} for fate in ("on_frame", "carried", "before", "after", "long_gap")}
    values = event_rewards(truth, gold_scale, death_penalty)
    for frame, (fate, _) in event_fates(truth, frame_index, max_carry_frames).items():
        totals[fate]["events"] += 1
        totals[fate]["reward"] += values[frame][0]
        totals[fate]["deaths"] += values[frame][1]
    return totals


def load_truth(root: Path, video_id: str) -> dict:
    return json.loads((root / "truth" / f"{video_id}.json").read_text())


def features_frames(root: Path, video_id: str) -> dict[int, dict]:
    document = json.loads((root / "features" / video_id / "features.json").read_text())
    return {frame["frame_idx"]: frame for frame in document["frames"]}


def assert_matches_truth(root: Path, dataset_dict, action_space: dict[str, dict], action_keys: dict[str, str]) -> int:
    """Every prepared row's reward, death and actions equal the truth/features of its frame number.

    Returns the number of videos checked.
    """
    checked = 0
    for split in dataset_dict.values():
        table = split.data
        video_ids = np.array(table.column("video_id").to_pylist())
        for video_id in np.unique(video_ids):
            rows = np.flatnonzero(video_ids == video_id)
            frame_index = table.column("frame_index").to_numpy()[rows]
            truth = load_truth(root, video_id)
            missing = set(truth["missing_latent_frames"])
            assert sorted(set(range(truth["num_frames"])) - set(frame_index.tolist())) == sorted(missing)
            rewards, deaths = expected_rewards(truth, frame_index)
            np.testing.assert_allclose(table.column("reward").to_numpy()[rows], rewards, atol=1e-5)
            np.testing.assert_array_equal(table.column("death").to_numpy()[rows], deaths)
            frames = features_frames(root, video_id)
            for name, key in action_keys.items():
                values = table.column(name).to_numpy(zero_copy_only=False)[rows]
                expected = [frames[int(f)][key] for f in frame_index]
                np.testing.assert_array_equal(values, np.array(expected, values.dtype), err_msg=f"{video_id} {name}")
            checked += 1
    return checked
