"""The demo dataset: the coin game played by its scripted player, written in the user's formats.

    python -m data.synthetic --output DIR [--num-videos 40 --frames 300 --latent-shape 8 4 4 --seed 0]

Writes `DIR/latents/<vid>.npz`, `DIR/features/<vid>/features.json` (the user's formats) and
`DIR/truth/<vid>.json` (the true deaths, gold and missing frames, as in the real fixtures). Every
video is one episode of the coin game (`envs.coin_game.CoinGame`) played by its scripted player
(`envs.scripted_player.ScriptedPlayer`), recorded by `envs.coin_play.record_video`, so a world model
trained on the videos learns the dynamics an agent faces when it plays the game itself
(`envs.coin_evaluation.evaluate_policy`). The game, its latents and the player are described in
docs/environments.md and docs/data.md; this module only writes what was played, and drops the latents
of some frames (a block of 8..25 frames in most videos, plus a few single frames) as the user's
tokenizer runs do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from envs.coin_game import FPS
from envs.coin_play import Episode, record_video
from modeling_dreamer.action_space import LOL_BINARY_KEYS as BINARY_KEYS


def features_document(video_id: str, episode: Episode) -> dict:
    """features.json content for one episode, in the user's format (frames[i].frame_idx == i)."""
    frames = []
    count = len(episode.reward)
    for t in range(count):
        moved = episode.player[min(t + 1, count - 1)] - episode.player[t]
        frame = {
            "frame_idx": t,
            "timestamp_ms": t * 1000.0 / FPS,
            "movement_dx": round(float(moved[0]) * 352, 1),
            "movement_dy": round(float(moved[1]) * 352, 1),
            "movement_slice": int(episode.actions["movement"][t]),
            "movement_confidence": 1.0,
            **{key: bool(episode.actions[key][t]) for key in BINARY_KEYS},
            "gold_gained": int(episode.gold[t]),
            "health_bar_x": int(episode.player[t][0] * 352) if episode.bar_visible[t] else None,
            "health_bar_y": int(episode.player[t][1] * 352) - 20 if episode.bar_visible[t] else None,
        }
        frames.append(frame)
    return {
        "video_id": video_id,
        "source_resolution": "352x352",
        "source_fps": float(FPS),
        "output_fps": FPS,
        "output_resolution": "352x352",
        "team_side": "blue",
        "num_frames": len(frames),
        "frames": frames,
    }


def missing_latent_frames(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frame numbers without a latent: a block of 8..25 frames in most videos, plus a few singles."""
    missing = set(rng.choice(frames, size=max(frames // 150, 1), replace=False).tolist())
    if rng.random() < 0.7 and frames > 60:
        start = int(rng.integers(10, frames - 40))
        missing.update(range(start, start + int(rng.integers(8, 26))))
    return np.array(sorted(missing), np.int64)


def generate(
    output: str | Path,
    num_videos: int = 40,
    frames: int = 300,
    latent_shape: tuple[int, int, int] = (8, 4, 4),
    seed: int = 0,
    is_dead: bool = False,
) -> list[str]:
    """Write the demo game to `output`; return the video ids. Deterministic from `seed`.

    Video `number` is :func:`record_video` `(seed, number, frames, latent_shape)`; its missing
    latent frames are drawn from their own generator.
    """
    output = Path(output)
    for folder in ("latents", "features", "truth"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    video_ids = []
    for number in range(num_videos):
        video_id = f"synthetic_{number:04d}"
        episode = record_video(seed, number, frames, latent_shape)
        missing = missing_latent_frames(frames, np.random.default_rng((seed, number, 4)))
        kept = np.setdiff1d(np.arange(frames), missing)
        np.savez(
            output / "latents" / f"{video_id}.npz", latents=episode.latents[kept], frame_indices=kept.astype(np.int32)
        )
        document = features_document(video_id, episode)
        if is_dead:
            for frame, dead in zip(document["frames"], episode.dead):
                frame["is_dead"] = bool(dead)
        (output / "features" / video_id).mkdir(exist_ok=True)
        (output / "features" / video_id / "features.json").write_text(json.dumps(document))
        truth = {
            "video_id": video_id,
            "num_frames": frames,
            "death_onsets": np.flatnonzero(episode.death).tolist(),
            "dead_frames": int(episode.dead.sum()),
            "gold_events": {str(t): int(episode.gold[t]) for t in np.flatnonzero(episode.gold)},
            "latent_frames": int(len(kept)),
            "missing_latent_frames": missing.tolist(),
            "presses": {key: int(episode.actions[key].sum()) for key in BINARY_KEYS},
        }
        (output / "truth" / f"{video_id}.json").write_text(json.dumps(truth, indent=1))
        video_ids.append(video_id)
    return video_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-videos", type=int, default=40)
    parser.add_argument("--frames", type=int, default=300, help="frames per video")
    parser.add_argument("--latent-shape", type=int, nargs=3, default=(8, 4, 4), metavar=("C", "H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--is-dead", action="store_true", help="also write the optional is_dead key")
    args = parser.parse_args(argv)
    ids = generate(args.output, args.num_videos, args.frames, tuple(args.latent_shape), args.seed, args.is_dead)
    print(f"wrote {len(ids)} videos x {args.frames} frames to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
