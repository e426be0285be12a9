"""Shared helpers for the data-layer tests: fixture location and checks against truth files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest


def fixtures_dir() -> Path:
    """`../shared/fixtures` beside the clone, or $DREAMER_FIXTURES; skip the test if absent."""
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"]
    if os.environ.get("DREAMER_FIXTURES"):
        candidates.insert(0, Path(os.environ["DREAMER_FIXTURES"]))
    for candidate in candidates:
        if (candidate / "lol_real").is_dir():
            return candidate
    pytest.skip(f"real-data fixtures not found (looked in {[str(c) for c in candidates]}; set DREAMER_FIXTURES)")


def expected_rewards(truth: dict, frame_index: np.ndarray, gold_scale: float = 0.01, death_penalty: float = -10.0):
    """Rewards and death flags per latent frame, computed from a truth file alone.

    Events on frames without a latent go to the next latent frame (the last one if none follows).
    """
    rewards = np.zeros(len(frame_index))
    deaths = np.zeros(len(frame_index), bool)
    position = {int(f): i for i, f in enumerate(frame_index)}

    def row_of(frame: int) -> int:
        later = [f for f in frame_index if f >= frame]
        return position[int(later[0])] if later else len(frame_index) - 1

    for frame, gold in truth["gold_events"].items():
        rewards[row_of(int(frame))] += gold_scale * gold
    for frame in truth["death_onsets"]:
        rewards[row_of(frame)] += death_penalty
        deaths[row_of(frame)] = True
    return rewards, deaths


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
