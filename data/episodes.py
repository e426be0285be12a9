"""Recorded environment episodes -> the prepared dataset, through a tokenizer.

    python -m data.prepare --episodes DIR --tokenizer TOKENIZER_DIR --output OUT

`DIR` is a recording of `python -m envs.record` (one row per frame: the frame, the action taken after it, the
reward observed at it, `terminated` / `truncated` on an episode's last frame). Every frame is encoded by the
causal tokenizer, one episode at a time and in chunks of frames that continue the tokenizer's cache (so the
latents are those a live agent encodes frame by frame), and each episode becomes one video of the prepared
dataset (`episode_<number>`): windows never span two episodes. The dataset gains the columns `terminated` and
`truncated`; rewards are the environment's own, on their frames (nothing to carry: every frame has a latent).
The schema records the tokenizer's identity (its folder name and a hash of its weights), so an agent trained on
these latents refuses another tokenizer. Torch and the model are imported only here, when this path runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.importers import VideoFrames
from modeling_dreamer.errors import DataError

# Frames encoded per tokenizer pass (one episode's chunks continue its cache): bounds the activation memory.
ENCODE_CHUNK_FRAMES = 64


def load_tokenizer(path: str | Path, device: str | None = None) -> tuple[Any, dict[str, str]]:
    """The tokenizer of a `save_pretrained` folder, in eval mode, and its identity `{"name", "hash"}`."""
    import torch

    from modeling_dreamer import DreamerTokenizer
    from modeling_dreamer.agent import tokenizer_identity

    try:
        tokenizer = DreamerTokenizer.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise DataError(f"--tokenizer {path}: {error}") from None
    tokenizer = tokenizer.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    name, digest = tokenizer_identity(tokenizer)
    return tokenizer, {"name": name or Path(path).name, "hash": digest}


def encode_episode(tokenizer: Any, frames: np.ndarray, chunk: int = ENCODE_CHUNK_FRAMES) -> np.ndarray:
    """`(N, H, W, 3)` uint8 frames of one episode -> `(N, C, H, W)` float16 latents, encoded in chunks that
    continue one cache (equal to encoding the whole episode at once, and to encoding it frame by frame)."""
    import torch

    cache = tokenizer.new_cache()
    pieces = []
    for start in range(0, len(frames), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + chunk]))[None]
        pieces.append(tokenizer.encode(batch, past_key_values=cache)[0].float().cpu().numpy())
    return np.concatenate(pieces).astype(np.float16)


def read_episodes(episodes_dir: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """A recording's frames, columns and metadata; `DataError` naming the folder on a bad recording."""
    from envs.recording import read_frames

    episodes_dir = Path(episodes_dir)
    try:
        metadata_probe = read_frames(episodes_dir, columns=())[2]
        components = list(metadata_probe["action_mapping"]["action_space"])
        frames, columns, metadata = read_frames(
            episodes_dir, columns=[*components, "has_action", "reward", "terminated", "truncated"])
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise DataError(f"--episodes {episodes_dir}: not a recording of `python -m envs.record` ({error})") from None
    if len(frames) == 0:
        raise DataError(f"--episodes {episodes_dir}: the recording holds no frame")
    return frames, columns, metadata


def episode_video(number: int, latents: np.ndarray, columns: dict[str, np.ndarray], rows: np.ndarray,
                  action_space: dict[str, dict]) -> VideoFrames:
    """One episode's rows (`rows`: their positions in the recording, in frame order) as a prepared video."""
    frame_index = columns["frame_index"][rows].astype(np.int32)
    if not (np.diff(frame_index) == 1).all() or frame_index[0] != 0:
        raise DataError(f"episode {number}: frame numbers are not 0, 1, 2, ... (a damaged recording)")
    video = VideoFrames(
        video_id=f"episode_{number:06d}",
        frame_index=frame_index,
        latents=latents,
        reward=columns["reward"][rows].astype(np.float32),
        death=np.zeros(len(rows), bool),
        actions={name: columns[name][rows].astype(np.int64 if spec["type"] == "categorical" else bool)
                 for name, spec in action_space.items()},
        has_action=columns["has_action"][rows].astype(bool),
    )
    video.terminated = columns["terminated"][rows].astype(bool)
    video.truncated = columns["truncated"][rows].astype(bool)
    reward = video.reward.astype(np.float64)
    video.stats = {
        "frames": len(rows), "gaps": 0, "frames_without_latent": 0, "deaths": 0, "reward_total": float(reward.sum()),
        "reward_kept": float(reward.sum()), "terminated": bool(video.terminated[-1]), "truncated": bool(video.truncated[-1]),
        "return": float(reward.sum()), "dropped": {"events": 0, "reward": 0.0, "deaths": 0},
        "event_reward_min": float(reward.min()), "event_reward_max": float(reward.max()),
    }
    return video


def prepare_episodes(
    episodes_dir: str | Path,
    tokenizer_dir: str | Path,
    output: str | Path,
    validation_fraction: float = 0.1,
    validation_videos: list[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> dict:
    """Encode a recording with a tokenizer and write the prepared dataset (`data.prepare`'s layout, with the
    columns `terminated` and `truncated`); returns the report."""
    from data.prepare import RewardTally, _reward_statistics, _warner, _write_prepared, _clean_output, choose_splits
    from data.schema import DatasetSchema, EnvironmentRewardSpec

    output = Path(output)
    warnings: list[str] = []
    warn = _warner(warnings)
    _clean_output(output, overwrite, warn)
    frames, columns, metadata = read_episodes(episodes_dir)
    tokenizer, identity = load_tokenizer(tokenizer_dir, device)
    config = tokenizer.config
    if frames.shape[1:3] != (config.image_height, config.image_width):
        raise DataError(f"--episodes {episodes_dir}: frames are {frames.shape[1]} x {frames.shape[2]}, the tokenizer "
                        f"{tokenizer_dir} takes {config.image_height} x {config.image_width}")
    action_space = metadata["action_mapping"]["action_space"]
    episodes = {int(e): np.flatnonzero(columns["episode"] == e) for e in np.unique(columns["episode"])}
    ids = {f"episode_{number:06d}": number for number in episodes}
    splits = choose_splits(sorted(ids), validation_fraction, seed, validation_videos, {})

    def import_one(video_id: str) -> VideoFrames:
        rows = episodes[ids[video_id]]
        return episode_video(ids[video_id], encode_episode(tokenizer, frames[rows]), columns, rows, action_space)

    def finish(per_video: dict[str, dict], tally: RewardTally, latent_shape: tuple) -> tuple[DatasetSchema, dict]:
        stats, twohot_range = _reward_statistics(tally, per_video, 0.0, Path(episodes_dir))
        schema = DatasetSchema(
            latent_shape=latent_shape, action_space=action_space, reward_spec=EnvironmentRewardSpec(str(metadata["env_id"])),
            recommended_twohot_range=twohot_range, reward_min=stats["covered_min"], reward_max=stats["covered_max"],
            action_keys={name: f"recorded action {name}" for name in action_space}, tokenizer=identity,
        )
        returns = [s["return"] for s in per_video.values()]
        report = {
            "inputs": {"episodes": str(episodes_dir), "tokenizer": str(tokenizer_dir)},
            "environment": metadata.get("env_id"), "policy": metadata.get("policy"),
            "videos": {"total": len(per_video), **splits},
            "frames": {"total": int(sum(s["frames"] for s in per_video.values())),
                       **{name: int(sum(per_video[v]["frames"] for v in ids_)) for name, ids_ in splits.items()}},
            "episodes": {"terminated": sum(s["terminated"] for s in per_video.values()),
                         "truncated": sum(s["truncated"] for s in per_video.values()),
                         "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns)),
                         "return_max": float(np.max(returns))},
            "gaps": 0, "deaths": {"total": 0}, "carried": {"events": 0, "reward": 0.0, "deaths": 0},
            "dropped": {"events": 0, "reward": 0.0, "deaths": 0}, "reward": stats,
            "recommended_twohot_range": list(twohot_range), "tokenizer": identity,
            "schema": json.loads(schema.to_json()), "warnings": warnings, "per_video": per_video,
        }
        return schema, report

    return _write_prepared(output, overwrite, splits, action_space, 0, import_one, finish, progress, warn,
                           episode_ends=True)
