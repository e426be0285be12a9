"""WindowDataset and collate_windows: windows inside runs of consecutive frames, dtypes kept."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.prepare import prepare
from data.sampler import MixtureSampler
from data.schema import load_prepared
from data.windows import WindowDataset, collate_windows


def _write(root, video_id, frame_indices, rewards=None, shape=(2, 3, 3)):
    frame_indices = np.asarray(frame_indices, np.int32)
    (root / "latents").mkdir(parents=True, exist_ok=True)
    (root / "features" / video_id).mkdir(parents=True, exist_ok=True)
    # Latent value = frame number, so a window's latents say which frames they came from.
    latents = np.broadcast_to(frame_indices[:, None, None, None], (len(frame_indices), *shape)).astype(np.float16)
    np.savez(root / "latents" / f"{video_id}.npz", latents=latents, frame_indices=frame_indices)
    rewards = rewards or {}
    frames = [
        {"frame_idx": i, "gold_gained": rewards.get(i, 0), "movement_slice": i % 18, "ability_w": i % 2 == 0, "health_bar_x": 1, "health_bar_y": 1}
        for i in range(int(frame_indices.max()) + 1)
    ]
    (root / "features" / video_id / "features.json").write_text(json.dumps({"frames": frames}))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    _write(root / "in", "a", list(range(10)) + list(range(12, 21)), rewards={13: 100})
    _write(root / "in", "b", range(5))
    prepare(root / "in" / "latents", root / "in" / "features", root / "out", validation_fraction=0.0, progress=False)
    dataset_dict, _ = load_prepared(root / "out")
    return dataset_dict["train"]


def test_windows_stay_inside_runs(split):
    windows = WindowDataset(split, window_length=4)
    # Runs: a 0..9 (10 frames), a 12..20 (9), b 0..4 (5); non-overlapping tiles of 4.
    starts = [(windows[i]["video_id"], int(windows[i]["frame_index"][0])) for i in range(len(windows))]
    assert starts == [("a", 0), ("a", 4), ("a", 12), ("a", 16), ("b", 0)]
    assert len(WindowDataset(split, window_length=4, stride=1)) == 7 + 6 + 2
    assert len(WindowDataset(split, window_length=10)) == 1


def test_window_contents_and_dtypes(split):
    windows = WindowDataset(split, window_length=4)
    window = windows[(2, 1)]
    np.testing.assert_array_equal(window["frame_index"], [12, 13, 14, 15])
    assert window["latents"].shape == (4, 2, 3, 3) and window["latents"].dtype == np.float16
    np.testing.assert_array_equal(window["latents"][:, 0, 0, 0], [12, 13, 14, 15])
    np.testing.assert_allclose(window["reward"], [0, 1.0, 0, 0])
    np.testing.assert_array_equal(window["movement"], [12, 13, 14, 15])
    np.testing.assert_array_equal(window["ability_w"], [True, False, True, False])
    assert window["reward"].dtype == np.float32 and window["movement"].dtype == np.int64
    assert window["death"].dtype == bool and window["has_action"].all() and window["frame_index"].dtype == np.int32
    assert (window["video_id"], window["source"], window["window_index"]) == ("a", 1, 2)
    assert windows[2]["source"] == 0
    assert windows.relevant_windows().tolist() == [2]
    with pytest.raises(IndexError):
        windows[5]


def test_windows_across_arrow_chunks_match_the_datasets_reader(split):
    import datasets

    chunked = datasets.concatenate_datasets([split.select(range(8)).flatten_indices(), split.select(range(8, len(split))).flatten_indices()])
    windows = WindowDataset(chunked, window_length=4, stride=1)
    assert len(windows._chunks) >= 2
    for i in range(len(windows)):
        start = int(windows.window_starts[i])
        reference = np.array(chunked[start : start + 4]["latents"], np.float16).reshape(4, 2, 3, 3)
        np.testing.assert_array_equal(windows[i]["latents"], reference)


def test_collate_and_dataloader_with_sampler(split):
    windows = WindowDataset(split, window_length=4)
    sampler = MixtureSampler(len(windows), windows.relevant_windows(), relevant_fraction=0.5, seed=0)
    loader = DataLoader(windows, batch_size=3, sampler=sampler, collate_fn=collate_windows)
    batches = list(loader)
    assert sum(len(b["video_id"]) for b in batches) == len(sampler)
    batch = batches[0]
    assert batch["latents"].dtype == torch.float16 and batch["latents"].shape[1:] == (4, 2, 3, 3)
    assert batch["movement"].dtype == torch.int64 and batch["ability_w"].dtype == torch.bool
    assert batch["source"].dtype == torch.int64 and isinstance(batch["video_id"], list)
    sources = torch.cat([b["source"] for b in batches])
    drawn = [pair for pair in sampler]
    assert sources.tolist() == [source for _, source in drawn]


def test_pickle_roundtrip_for_dataloader_workers(split):
    windows = WindowDataset(split, window_length=4)
    copy = pickle.loads(pickle.dumps(windows))
    for i in range(len(windows)):
        np.testing.assert_array_equal(copy[i]["latents"], windows[i]["latents"])


def test_rejects_index_mapped_split(split):
    with pytest.raises(ValueError, match="flatten_indices"):
        WindowDataset(split.select([2, 0, 1]), window_length=2)


def test_relevant_windows_hold_gains_and_penalties(split):
    # Frame 3 of video b becomes a death penalty; video a keeps its gold at frame 13.
    with_penalty = split.map(lambda row: {"reward": -10.0 if (row["video_id"], row["frame_index"]) == ("b", 3)
                                          else row["reward"]})
    windows = WindowDataset(with_penalty, window_length=4, stride=1)
    rewards = [np.asarray(windows[i]["reward"]) for i in range(len(windows))]
    gains = [i for i, r in enumerate(rewards) if (r > 0).any()]
    penalties = [i for i, r in enumerate(rewards) if (r < 0).any()]
    assert len(gains) == 2 and len(penalties) == 2  # windows over frame a/13 (starts 12, 13) and b/3 (0, 1)
    assert windows.relevant_windows().tolist() == sorted(gains + penalties)
