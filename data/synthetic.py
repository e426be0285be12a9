"""`python -m data.synthetic --output DIR`: a small demo game written in the user's formats.

    python -m data.synthetic --output DIR [--num-videos 40 --frames 300 --latent-shape 8 4 4 --seed 0]

Writes `DIR/latents/<vid>.npz`, `DIR/features/<vid>/features.json` (DESIGN.md section 4) and
`DIR/truth/<vid>.json` (the true deaths, gold and missing frames, as in the real fixtures).

The game: a square arena. A coin appears at a random place; a scripted player walks to it and
picks it up (gold 20..150), then idles until the next coin appears. An enemy drifts towards the
player and hurts it when close; the player presses `ability_q` to knock a nearby enemy away,
`summoner_d` to escape when nearly dead, `recall_b` to go home and heal when low. At zero health
the player is dead for 20..40 frames (health bar null: death is only visible through the bar, as
in the user's data), then respawns at home. The health bar also flickers off for 1..2 frames now
and then (not deaths). Some frames have no latent (gaps), so rewards must be carried.

The latent of frame t is what a tokenizer could see at t: channel maps of the player, coin and
enemy positions (Gaussian bumps), health, a gold flash on the pickup frame, a death flash on the
death frame and the player's heading towards the coin as a (cos, sin) pair spread over the frame
(zero when idle; a global feature that attention can pool without knowing where it looked);
plus noise, float16. So the
reward at t and the movement at t are predictable from the latent at t, and the approach of a
coin or the enemy announces rewards a few frames ahead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modeling_dreamer.action_space import LOL_BINARY_KEYS as BINARY_KEYS

FPS = 20
HOME = np.array([0.1, 0.1])
BASE_CHANNELS = 8


@dataclass
class Episode:
    """Per-frame game state and the player's actions, arrays of length F."""

    player: np.ndarray  # (F, 2) position
    coin: np.ndarray  # (F, 2) position, NaN when no coin
    enemy: np.ndarray  # (F, 2)
    health: np.ndarray  # (F,) in [0, 1], 0 when dead
    dead: np.ndarray  # (F,) bool
    bar_flicker: np.ndarray  # (F,) bool: bar hidden while alive
    gold: np.ndarray  # (F,) int, gold picked up at t
    death_onset: np.ndarray  # (F,) bool
    movement_slice: np.ndarray  # (F,) int 0..17 (0 also when idle)
    heading: np.ndarray  # (F,) radians of the step the player takes at t (NaN when idle)
    keys: dict[str, np.ndarray] = field(default_factory=dict)  # (F,) bool per binary key


def heading_slice(angle: float) -> int:
    """The 20-degree slice 0..17 of a heading in radians (0 also means "no movement")."""
    return int(math.degrees(angle) % 360.0 // 20.0) % 18


def play_episode(frames: int, rng: np.random.Generator) -> Episode:
    """Simulate one video of `frames` frames. The action at t is chosen from the state at t."""
    player, enemy = HOME.copy(), rng.uniform(0.4, 0.9, 2)
    coin: np.ndarray | None = rng.uniform(0.05, 0.95, 2)
    health, dead_for, coin_wait, q_cooldown, flicker_for = 1.0, 0, 0, 0, 0
    flash_ready = True  # summoner_d: once per life
    pending_gold, pending_death = 0, False
    out = {
        name: [] for name in ("player", "coin", "enemy", "health", "dead", "bar_flicker", "gold", "death_onset")
    }
    out.update(movement_slice=[], heading=[], **{key: [] for key in BINARY_KEYS})

    for _ in range(frames):
        # Observe the state of frame t (events that happened on the way into t are shown now).
        alive = dead_for == 0
        if alive and flicker_for == 0 and health > 0.35 and rng.random() < 0.01:
            flicker_for = int(rng.integers(1, 3))
        out["player"].append(player.copy())
        out["coin"].append(coin.copy() if coin is not None else np.full(2, np.nan))
        out["enemy"].append(enemy.copy())
        out["health"].append(health if alive else 0.0)
        out["dead"].append(not alive)
        out["bar_flicker"].append(alive and flicker_for > 0)
        out["gold"].append(pending_gold)
        out["death_onset"].append(pending_death)
        pending_gold, pending_death = 0, False
        flicker_for = max(flicker_for - 1, 0)

        # The scripted player acts on what it sees at t.
        keys = dict.fromkeys(BINARY_KEYS, False)
        heading = math.nan
        enemy_distance = float(np.linalg.norm(enemy - player))
        if alive:
            if health < 0.3 and enemy_distance > 0.3:
                keys["recall_b"] = True
            elif health < 0.2 and enemy_distance < 0.2 and flash_ready:
                keys["summoner_d"], flash_ready = True, False
            if enemy_distance < 0.22 and q_cooldown == 0:
                keys["ability_q"], q_cooldown = True, 40
            for key, chance in (("ability_w", 0.01), ("ability_e", 0.01), ("item_used", 0.005)):
                keys[key] = bool(rng.random() < chance)
            if coin is not None and not keys["recall_b"]:
                heading = math.atan2(*(coin - player)[::-1])
        out["movement_slice"].append(0 if math.isnan(heading) else heading_slice(heading))
        out["heading"].append(heading)
        for key in BINARY_KEYS:
            out[key].append(keys[key])

        # Transition to t + 1.
        q_cooldown = max(q_cooldown - 1, 0)
        if not alive:
            dead_for -= 1
            if dead_for == 0:
                player, health, flash_ready = HOME.copy(), 1.0, True
        else:
            if keys["recall_b"]:
                player, health = HOME.copy(), 1.0
            elif keys["summoner_d"]:
                player = np.clip(player + (player - enemy) / max(enemy_distance, 1e-6) * 0.25, 0.0, 1.0)
            elif not math.isnan(heading):
                player = player + 0.035 * np.array([math.cos(heading), math.sin(heading)])
            if keys["ability_q"]:
                enemy = rng.uniform(0.0, 1.0, 2)
            if coin is not None and np.linalg.norm(coin - player) < 0.04:
                pending_gold, coin, coin_wait = int(rng.integers(20, 151)), None, int(rng.integers(1, 5))
            if np.linalg.norm(enemy - player) < 0.12:
                health -= 0.07
            health = min(health + 0.003, 1.0)
            if health <= 0:
                pending_death, dead_for, health = True, int(rng.integers(20, 41)), 0.0
        step = player - enemy
        enemy = np.clip(enemy + 0.014 * step / max(float(np.linalg.norm(step)), 1e-6) + rng.normal(0, 0.01, 2), 0, 1)
        if coin is None:
            coin_wait -= 1
            if coin_wait <= 0:
                coin = rng.uniform(0.05, 0.95, 2)

    arrays = {name: np.array(values) for name, values in out.items() if name not in BINARY_KEYS}
    return Episode(**arrays, keys={key: np.array(out[key], bool) for key in BINARY_KEYS})


def encode_latents(episode: Episode, latent_shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """`(F, C, H, W)` float16 latents showing the state of each frame, plus noise."""
    channels, height, width = latent_shape
    if channels < BASE_CHANNELS or height < 2 or width < 2:
        raise ValueError(f"synthetic latents need C >= {BASE_CHANNELS} and H, W >= 2, got {latent_shape}")
    frames = len(episode.health)
    ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")

    def bump(position: np.ndarray) -> np.ndarray:  # (F, 2) -> (F, H, W); NaN positions give 0
        d2 = (xs - position[:, :1, None]) ** 2 + (ys - position[:, 1:, None]) ** 2
        return np.nan_to_num(np.exp(-d2 / (2 * 0.2**2)))

    alive = ~episode.dead
    ones = np.ones((frames, height, width))
    # Heading as (cos, sin) over the whole frame, zero when idle.
    heading_cos = np.nan_to_num(np.cos(episode.heading))
    heading_sin = np.nan_to_num(np.sin(episode.heading))
    base = np.stack(
        [
            bump(episode.player) * alive[:, None, None],
            bump(episode.coin),
            bump(episode.enemy),
            ones * episode.health[:, None, None],
            ones * heading_cos[:, None, None],
            ones * (episode.gold / 100.0)[:, None, None],
            ones * episode.death_onset[:, None, None],
            ones * heading_sin[:, None, None],
        ],
        axis=1,
    )
    # Wider latents: fixed random mixtures of the base maps, so every channel carries signal.
    mixing = np.random.default_rng(channels).normal(0, 0.5, (channels - BASE_CHANNELS, BASE_CHANNELS))
    extra = np.einsum("kc,fchw->fkhw", mixing, base)
    latents = np.concatenate([base, extra], axis=1) + rng.normal(0, 0.1, (frames, channels, height, width))
    return latents.astype(np.float16)


def features_document(video_id: str, episode: Episode) -> dict:
    """features.json content for one episode, in the user's format (frames[i].frame_idx == i)."""
    frames = []
    for t in range(len(episode.health)):
        moved = episode.player[min(t + 1, len(episode.health) - 1)] - episode.player[t]
        bar_shown = not episode.dead[t] and not episode.bar_flicker[t]
        frame = {
            "frame_idx": t,
            "timestamp_ms": t * 1000.0 / FPS,
            "movement_dx": round(float(moved[0]) * 352, 1),
            "movement_dy": round(float(moved[1]) * 352, 1),
            "movement_slice": int(episode.movement_slice[t]),
            "movement_confidence": 1.0,
            **{key: bool(episode.keys[key][t]) for key in BINARY_KEYS},
            "gold_gained": int(episode.gold[t]),
            "health_bar_x": int(episode.player[t][0] * 352) if bar_shown else None,
            "health_bar_y": int(episode.player[t][1] * 352) - 20 if bar_shown else None,
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
    """Write the demo game to `output`; return the video ids. Deterministic from `seed`."""
    output = Path(output)
    for folder in ("latents", "features", "truth"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    video_ids = []
    for number in range(num_videos):
        rng = np.random.default_rng((seed, number))
        video_id = f"synthetic_{number:04d}"
        episode = play_episode(frames, rng)
        latents = encode_latents(episode, latent_shape, rng)
        missing = missing_latent_frames(frames, rng)
        kept = np.setdiff1d(np.arange(frames), missing)
        np.savez(output / "latents" / f"{video_id}.npz", latents=latents[kept], frame_indices=kept.astype(np.int32))

        document = features_document(video_id, episode)
        if is_dead:
            for frame, dead in zip(document["frames"], episode.dead):
                frame["is_dead"] = bool(dead)
        (output / "features" / video_id).mkdir(exist_ok=True)
        (output / "features" / video_id / "features.json").write_text(json.dumps(document))
        truth = {
            "video_id": video_id,
            "num_frames": frames,
            "death_onsets": np.flatnonzero(episode.death_onset).tolist(),
            "dead_frames": int(episode.dead.sum()),
            "gold_events": {str(t): int(episode.gold[t]) for t in np.flatnonzero(episode.gold)},
            "latent_frames": int(len(kept)),
            "missing_latent_frames": missing.tolist(),
            "presses": {key: int(episode.keys[key].sum()) for key in BINARY_KEYS},
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
