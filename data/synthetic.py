"""The demo game: a steppable coin game, its scripted player, and the demo dataset written from them.

    python -m data.synthetic --output DIR [--num-videos 40 --frames 300 --latent-shape 8 4 4 --seed 0]

Writes `DIR/latents/<vid>.npz`, `DIR/features/<vid>/features.json` (the user's formats) and
`DIR/truth/<vid>.json` (the true deaths, gold and missing frames, as in the real fixtures). Every
video is one episode of :class:`CoinGame` played by :class:`ScriptedPlayer`, so a world model trained
on the videos learns the dynamics an agent faces when it plays :class:`CoinGame` itself
(:func:`evaluate_policy`).

The game (a unit square; frame t shows the state at t, the action at t moves the game to t + 1):
- A coin appears 0.15..0.45 away from the player; walking within 0.05 of it picks it up (gold
  50..150, shown as a flash on the next frame); 1..3 frames later the next coin appears.
- `movement` 0 stands still; slice k in 1..17 steps 0.035 towards its slice centre, (20 k + 10)
  degrees. Headings in slice 0 (0..20 degrees) cannot be taken: 0 means "no movement" in the user's
  data, so a player heading there takes slice 17 or 1, whichever centre is nearer.
- An enemy wanders and closes in on a player within 0.15; within 0.11 it strikes (0.35..0.65 health)
  and retreats. `ability_q` knocks an enemy within 0.15 away; `recall_b` teleports home with full
  health. At zero health the player is dead for 20..40 frames (health bar null: death is only visible
  through the bar, as in the user's data) and respawns at home. The health bar also flickers off for
  1..2 frames now and then (not deaths). The other keys do nothing.
- Reward (the data layer's rule, `data.schema.RewardSpec`): `gold_scale * gold + death_penalty *
  death` (0.01 and -10).

The scripted player is a decent but imperfect expert, so that behaviour cloning copies its flaws and
reinforcement learning has something to gain (design notes in docs/data.md): it aims 40 degrees
counterclockwise of the coin (a fixed bias: it circles in), takes a neighbouring slice on 20% of its
moves, idles on 10% of the frames a coin is shown, presses `ability_q` on only 30% of the frames the
enemy is within reach and recalls only below 0.1 health.

The latent of frame t is what a tokenizer could see at t, computed before the action at t is chosen:
player, coin and enemy positions (Gaussian bumps), health, a gold flash on the pickup frame, a death
flash on the death frame, and the direction from the player to the coin as (cos, sin) constant over
the frame (zero when no coin is shown or the player is dead): a global feature, so attention can
pool it without knowing where it looked. Plus noise 0.1; stored as float16.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.schema import RewardSpec
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE
from modeling_dreamer.action_space import LOL_BINARY_KEYS as BINARY_KEYS

FPS = 20
HOME = (0.1, 0.1)
BASE_CHANNELS = 8
NUM_SLICES = int(DEFAULT_ACTION_SPACE["movement"]["n"])  # 18 slices of 20 degrees
SLICE_DEGREES = 360.0 / NUM_SLICES

Seed = int | Sequence[int]


# ---------------------------------------------------------------------------------------------------
# Movement slices
# ---------------------------------------------------------------------------------------------------


def heading_slice(angle: float) -> int:
    """The 20-degree slice 0..17 of a heading in radians (0 also means "no movement")."""
    return int(math.degrees(angle) % 360.0 // SLICE_DEGREES) % NUM_SLICES


def slice_heading(movement: int) -> float | None:
    """The heading in radians that `movement` walks along (its slice centre); None for 0 (stand still)."""
    if not 0 <= movement < NUM_SLICES:
        raise ValueError(f"movement must be in 0..{NUM_SLICES - 1}, got {movement}")
    return None if movement == 0 else math.radians(movement * SLICE_DEGREES + SLICE_DEGREES / 2)


def moving_slice(angle: float) -> int:
    """The slice 1..17 whose centre is nearest to `angle` (radians): the best representable heading.

    Slice 0 means "stand still", so a heading inside 0..20 degrees goes to slice 17 (centre 350) below
    10 degrees and to slice 1 (centre 30) from 10 degrees on.
    """
    degrees = math.degrees(angle) % 360.0
    movement = heading_slice(angle)
    if movement == 0:
        return NUM_SLICES - 1 if degrees < SLICE_DEGREES / 2 else 1
    return movement


def neighbour_slice(movement: int, step: int) -> int:
    """The moving slice `step` (+1 / -1) slices away from `movement` (1..17), skipping slice 0."""
    return (movement - 1 + step) % (NUM_SLICES - 1) + 1


# ---------------------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GameRules:
    """The game's constants (distances in arena units, the arena being the unit square)."""

    speed: float = 0.035  # player step per frame
    pickup_radius: float = 0.05
    coin_distance: tuple[float, float] = (0.15, 0.45)  # from the player, when a coin appears
    coin_wait: tuple[int, int] = (1, 3)  # frames without a coin after a pickup (inclusive)
    gold: tuple[int, int] = (50, 150)  # gold per coin (inclusive)
    enemy_speed: float = 0.02
    enemy_noise: float = 0.005  # of the enemy's smoothed random walk
    enemy_sight: float = 0.15  # the enemy closes in on a living player this close
    hurt_radius: float = 0.11  # an enemy this close strikes once, then retreats like a knocked one
    damage: tuple[float, float] = (0.35, 0.65)  # health taken by a strike (uniform)
    regen: float = 0.0005  # health per frame while alive
    knock_radius: float = 0.15  # ability_q reaches an enemy this close
    knock_distance: float = 0.4  # a knocked enemy lands at least this far from the player
    dead_frames: tuple[int, int] = (20, 40)  # (inclusive)
    flicker_chance: float = 0.01  # per frame, while alive with health above flicker_min_health
    flicker_min_health: float = 0.7  # above any strike, so no flicker runs into a death


@dataclass(frozen=True)
class Observation:
    """What frame t shows, the clean inputs of its latent (and of the scripted player).

    `player` and `coin` are `(2,)` positions or None (player dead / no coin shown); `health` is 0
    while dead; `gold` is the gold picked up on the way into t and `death` whether the player died
    on the way into t (the frame's flashes, and its reward).
    """

    player: np.ndarray | None
    coin: np.ndarray | None
    enemy: np.ndarray
    health: float
    gold: int = 0
    death: bool = False

    def coin_direction(self) -> float | None:
        """Angle in radians from the player to the coin; None if either is not shown."""
        if self.player is None or self.coin is None:
            return None
        dx, dy = self.coin - self.player
        return math.atan2(dy, dx)

    def enemy_distance(self) -> float:
        """Distance from the player to the enemy (inf while dead)."""
        return math.inf if self.player is None else math.dist(self.enemy, self.player)


def game_streams(seed: Seed, count: int) -> list[np.random.Generator]:
    """`count` independent generators from one seed (`numpy.random.SeedSequence.spawn`)."""
    entropy = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    return [np.random.default_rng(child) for child in np.random.SeedSequence(entropy).spawn(count)]


class CoinGame:
    """The steppable demo game. Pure numpy, deterministic from the seed given to :meth:`reset`.

    ``latent, info = game.reset(seed)`` shows frame 0; ``latent, reward, info = game.step(actions)``
    applies the actions taken at the current frame and shows the next one, with the reward observed
    there. ``latent`` is `(C, H, W)` float32 holding float16-representable values (the stored
    dataset's precision). ``actions`` maps components of the default action space to ints/bools;
    missing components are 0 / False.

    Each source of randomness has its own generator (coins, enemy drift, knock-backs, deaths, health
    bar flicker, latent noise), so two policies played from the same seed meet the same sequence of
    coin offsets and gold amounts, and the same enemy noise, however differently they act.
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int] = (8, 4, 4),
        rules: GameRules | None = None,
        reward_spec: RewardSpec | None = None,
    ):
        channels, height, width = (int(d) for d in latent_shape)
        if channels < BASE_CHANNELS or height < 2 or width < 2:
            raise ValueError(f"synthetic latents need C >= {BASE_CHANNELS} and H, W >= 2, got {latent_shape}")
        self.latent_shape = (channels, height, width)
        self.rules = rules or GameRules()
        self.reward_spec = reward_spec or RewardSpec()
        self.renderer = LatentRenderer(self.latent_shape)
        self._seeded = False

    # -- episode --------------------------------------------------------------------------------

    def reset(self, seed: Seed) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: `(latent of frame 0, info)`."""
        rules = self.rules
        (self._coin_rng, self._enemy_rng, self._knock_rng, self._death_rng, self._flicker_rng,
         self._noise_rng) = game_streams(seed, 6)
        self.frame = 0
        self.player = np.array(HOME, np.float64)
        self.enemy = self._enemy_rng.uniform(0.4, 0.9, 2)
        self.enemy_velocity = np.zeros(2)
        self.health = 1.0
        self.dead_for = 0
        self.coin: np.ndarray | None = None
        self.coin_wait = 0
        self.flicker_for = 0
        self._spawn_coin()
        self._update_flicker()
        self._seeded = True
        self.observation = self._observe(gold=0, death=False)
        return self._render(), self._info(0.0)

    def step(self, actions: Mapping[str, Any]) -> tuple[np.ndarray, float, dict[str, Any]]:
        """Take `actions` at the current frame t; returns `(latent, reward, info)` of frame t + 1."""
        if not self._seeded:
            raise RuntimeError("call reset(seed) before step()")
        rules = self.rules
        movement = int(actions.get("movement", 0))
        heading = slice_heading(movement)
        gold, death = 0, False
        if self.dead_for > 0:
            self.dead_for -= 1
            if self.dead_for == 0:
                self.player, self.health = np.array(HOME, np.float64), 1.0
        else:
            if bool(actions.get("recall_b", False)):
                self.player, self.health = np.array(HOME, np.float64), 1.0
            elif heading is not None:
                step = rules.speed * np.array([math.cos(heading), math.sin(heading)])
                self.player = np.clip(self.player + step, 0.0, 1.0)
            if bool(actions.get("ability_q", False)) and self._enemy_distance() < rules.knock_radius:
                self._knock_enemy()
            if self.coin is not None and math.dist(self.coin, self.player) < rules.pickup_radius:
                gold = int(self._coin_rng.integers(rules.gold[0], rules.gold[1] + 1))
                self.coin, self.coin_wait = None, int(self._coin_rng.integers(rules.coin_wait[0], rules.coin_wait[1] + 1))
        # The enemy wanders (a smoothed random walk, two draws every frame) and closes in on a living
        # player within its sight.
        self.enemy_velocity = 0.9 * self.enemy_velocity + self._enemy_rng.normal(0.0, rules.enemy_noise, 2)
        speed = math.hypot(*self.enemy_velocity)
        if speed > rules.enemy_speed:
            self.enemy_velocity *= rules.enemy_speed / speed
        towards = self.player - self.enemy
        distance = math.hypot(*towards)
        if self.dead_for == 0 and distance < rules.enemy_sight:
            self.enemy_velocity = rules.enemy_speed * towards / max(distance, 1e-6)
        self.enemy = self.enemy + self.enemy_velocity
        bounced = (self.enemy < 0.0) | (self.enemy > 1.0)
        self.enemy_velocity = np.where(bounced, -self.enemy_velocity, self.enemy_velocity)
        self.enemy = np.clip(self.enemy, 0.0, 1.0)
        if self.dead_for == 0:
            if self._enemy_distance() < rules.hurt_radius:
                self.health -= self._knock_rng.uniform(*rules.damage)
                self._knock_enemy()
            self.health = min(self.health + rules.regen, 1.0)
            if self.health <= 0.0:
                death, self.health = True, 0.0
                self.dead_for = int(self._death_rng.integers(rules.dead_frames[0], rules.dead_frames[1] + 1))
        if self.coin is None:
            self.coin_wait -= 1
            if self.coin_wait <= 0:
                self._spawn_coin()
        self.frame += 1
        self._update_flicker()
        self.observation = self._observe(gold=gold, death=death)
        reward = float(self.reward_spec.reward(np.array([gold]), np.array([death]))[0])
        return self._render(), reward, self._info(reward)

    # -- rules ----------------------------------------------------------------------------------

    def _enemy_distance(self) -> float:
        return math.dist(self.enemy, self.player)

    def _spawn_coin(self) -> None:
        """A coin at a random distance and direction from the player, mirrored back into the arena.

        Exactly two draws per coin (mirroring instead of rejection), so the k-th coin's offset is the
        same whatever the player did before it.
        """
        low, high = self.rules.coin_distance
        distance, angle = self._coin_rng.uniform(low, high), self._coin_rng.uniform(0.0, 2 * math.pi)
        offset = distance * np.array([math.cos(angle), math.sin(angle)])
        coin = self.player + offset
        outside = (coin < 0.05) | (coin > 0.95)
        coin = np.where(outside, self.player - offset, coin)
        self.coin = np.clip(coin, 0.05, 0.95)

    def _knock_enemy(self) -> None:
        """Knock the enemy to a uniform random spot at least `knock_distance` from the player."""
        while True:
            spot = self._knock_rng.uniform(0.0, 1.0, 2)
            if math.dist(spot, self.player) >= self.rules.knock_distance:
                self.enemy = spot
                return

    def _update_flicker(self) -> None:
        """Health bar flicker for the new frame: two draws every frame keep the stream aligned."""
        start, length = self._flicker_rng.random(), int(self._flicker_rng.integers(1, 3))
        if self.flicker_for > 0:
            self.flicker_for -= 1
        elif self.dead_for == 0 and self.health > self.rules.flicker_min_health and start < self.rules.flicker_chance:
            self.flicker_for = length

    # -- what a frame shows ---------------------------------------------------------------------

    def _observe(self, gold: int, death: bool) -> Observation:
        alive = self.dead_for == 0
        return Observation(
            player=self.player.copy() if alive else None,
            coin=None if self.coin is None else self.coin.copy(),
            enemy=self.enemy.copy(),
            health=float(self.health) if alive else 0.0,
            gold=gold,
            death=death,
        )

    def _render(self) -> np.ndarray:
        noise = 0.1 * self._noise_rng.standard_normal(self.latent_shape, dtype=np.float32)
        return (self.renderer(self.observation) + noise).astype(np.float16).astype(np.float32)

    @property
    def health_bar_visible(self) -> bool:
        """Whether the current frame shows the health bar (hidden while dead or flickering)."""
        return self.dead_for == 0 and self.flicker_for == 0

    def _info(self, reward: float) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "observation": self.observation,
            "gold": self.observation.gold,
            "death": self.observation.death,
            "dead": self.dead_for > 0,
            "health_bar_visible": self.health_bar_visible,
            "reward": reward,
        }


class LatentRenderer:
    """The noiseless latent `(C, H, W)` of a frame: the 8 base maps, then fixed random mixtures of them.

    Base maps: player, coin, enemy (Gaussian bumps of width 0.2; zero when not shown), health,
    gold / 100, death flash, and cos / sin of the direction from the player to the coin (both
    constant over the frame; zero when no coin is shown or the player is dead). Wider latents add
    fixed random mixtures of the base maps (seeded by C), so every channel carries signal.
    """

    def __init__(self, latent_shape: tuple[int, int, int]):
        channels, height, width = latent_shape
        self.ys, self.xs = np.meshgrid(
            (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij"
        )
        self.mixing = np.random.default_rng(channels).normal(0, 0.5, (channels - BASE_CHANNELS, BASE_CHANNELS))

    def _bump(self, position: np.ndarray | None) -> np.ndarray:
        if position is None:
            return np.zeros_like(self.xs)
        return np.exp(-((self.xs - position[0]) ** 2 + (self.ys - position[1]) ** 2) / (2 * 0.2**2))

    def __call__(self, observation: Observation) -> np.ndarray:
        direction = observation.coin_direction()
        constants = np.array([
            observation.health,
            observation.gold / 100.0,
            float(observation.death),
            0.0 if direction is None else math.cos(direction),
            0.0 if direction is None else math.sin(direction),
        ])
        base = np.concatenate([
            np.stack([self._bump(observation.player), self._bump(observation.coin), self._bump(observation.enemy)]),
            np.broadcast_to(constants[:, None, None], (len(constants), *self.xs.shape)),
        ])
        return np.concatenate([base, np.tensordot(self.mixing, base, axes=1)])


# ---------------------------------------------------------------------------------------------------
# The scripted player (the data's behaviour)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayerStyle:
    """How the scripted player plays. The flaws are what behaviour cloning copies and RL can remove."""

    aim_offset_degrees: float = 40.0  # heads this far counterclockwise of the coin (a fixed bias)
    neighbour_chance: float = 0.2  # a move takes a neighbouring slice (half each side)
    idle_chance: float = 0.1  # stands still on a frame a coin is shown
    knock_chance: float = 0.3  # presses ability_q on a frame the enemy is within reach
    knock_reach: float = 0.15  # ... "within reach" as the player judges it
    recall_health: float = 0.1  # recalls below this health ...
    recall_enemy_distance: float = 0.3  # ... when the enemy is at least this far
    random_keys: tuple[tuple[str, float], ...] = (("ability_w", 0.01), ("ability_e", 0.01), ("item_used", 0.005))


class ScriptedPlayer:
    """The data's behaviour: a policy of the :class:`Observation` of the current frame (no hidden state).

    ``player.reset(seed)``, then ``player.act(observation) -> {component: int | bool}`` once per frame.
    Its randomness has its own generator, with the same number of draws every frame.
    """

    def __init__(self, style: PlayerStyle | None = None):
        self.style = style or PlayerStyle()
        self._rng = np.random.default_rng(0)

    def reset(self, seed: Seed) -> None:
        self._rng = game_streams(seed, 1)[0]

    def act(self, observation: Observation) -> dict[str, int | bool]:
        style = self.style
        idle, neighbour, side, knock, *key_draws = self._rng.random(4 + len(style.random_keys))
        actions: dict[str, int | bool] = {"movement": 0, **dict.fromkeys(BINARY_KEYS, False)}
        if observation.player is None:  # dead: nothing to do
            return actions
        enemy_distance = observation.enemy_distance()
        actions["recall_b"] = bool(
            observation.health < style.recall_health and enemy_distance >= style.recall_enemy_distance
        )
        actions["ability_q"] = bool(enemy_distance < style.knock_reach and knock < style.knock_chance)
        for (key, chance), draw in zip(style.random_keys, key_draws):
            actions[key] = bool(draw < chance)
        direction = observation.coin_direction()
        if direction is not None and not actions["recall_b"] and idle >= style.idle_chance:
            movement = moving_slice(direction + math.radians(style.aim_offset_degrees))
            if neighbour < style.neighbour_chance:
                movement = neighbour_slice(movement, 1 if side < 0.5 else -1)
            actions["movement"] = movement
        return actions


# ---------------------------------------------------------------------------------------------------
# Playing episodes: the dataset and policy evaluation
# ---------------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """One played episode, per-frame arrays of length F (frame t: what t shows, the actions taken at t)."""

    latents: np.ndarray  # (F, C, H, W) float16
    reward: np.ndarray  # (F,) float64, observed at t (0 at frame 0)
    gold: np.ndarray  # (F,) int
    death: np.ndarray  # (F,) bool, death onset
    dead: np.ndarray  # (F,) bool
    bar_visible: np.ndarray  # (F,) bool
    player: np.ndarray  # (F, 2), the last living position while dead
    actions: dict[str, np.ndarray] = field(default_factory=dict)  # (F,) per component

    @property
    def total_reward(self) -> float:
        return float(self.reward.sum())


def play_episode(
    game: CoinGame, policy: Callable[[np.ndarray, Observation], Mapping[str, Any]], seed: Seed, frames: int
) -> Episode:
    """Play `frames` frames from `game.reset(seed)`: the policy sees frame t and acts; the game steps.

    `policy(latent, observation)` gets both the latent and the clean observation of the frame; the
    scripted player reads the observation, a learned agent only the latent.
    """
    latent, info = game.reset(seed)
    rows: dict[str, list] = {name: [] for name in ("latents", "reward", "gold", "death", "dead", "bar_visible", "player")}
    actions: dict[str, list] = {name: [] for name in DEFAULT_ACTION_SPACE}
    reward = 0.0
    for t in range(frames):
        rows["latents"].append(latent.astype(np.float16))
        rows["reward"].append(reward)
        rows["gold"].append(info["gold"])
        rows["death"].append(info["death"])
        rows["dead"].append(info["dead"])
        rows["bar_visible"].append(info["health_bar_visible"])
        rows["player"].append(game.player.copy())
        chosen = policy(latent, info["observation"])
        for name in actions:
            actions[name].append(chosen.get(name, 0))
        if t + 1 < frames:
            latent, reward, info = game.step(chosen)
    return Episode(
        latents=np.stack(rows["latents"]),
        reward=np.array(rows["reward"], np.float64),
        gold=np.array(rows["gold"], np.int64),
        death=np.array(rows["death"], bool),
        dead=np.array(rows["dead"], bool),
        bar_visible=np.array(rows["bar_visible"], bool),
        player=np.stack(rows["player"]),
        actions={
            name: np.array(values, np.int64 if spec["type"] == "categorical" else bool)
            for (name, values), spec in zip(actions.items(), DEFAULT_ACTION_SPACE.values())
        },
    )


def video_seeds(seed: int, number: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(game seed, scripted player seed) of video `number` of the dataset generated with `seed`."""
    return (seed, number, 0), (seed, number, 1)


def evaluation_seeds(seed: int, episode: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(game seed, scripted player seed) of evaluation episode `episode`: disjoint from every dataset video."""
    return (seed, episode, 2), (seed, episode, 3)


def scripted_policy(player: ScriptedPlayer) -> Callable[[np.ndarray, Observation], Mapping[str, Any]]:
    return lambda latent, observation: player.act(observation)


def record_video(seed: int, number: int, frames: int, latent_shape: tuple[int, int, int]) -> Episode:
    """Video `number` of the dataset generated with `seed`: the scripted player playing :class:`CoinGame`."""
    game_seed, player_seed = video_seeds(seed, number)
    player = ScriptedPlayer()
    player.reset(player_seed)
    return play_episode(CoinGame(latent_shape), scripted_policy(player), game_seed, frames)


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


@dataclass
class PolicyEvaluation:
    """True returns per episode (the sum of the game's rewards over the episode's frames), paired by seed.

    `movement_agreement` is the share of the policy's frames (player alive) on which its movement
    equals the scripted player's choice on the same observation: the game-side counterpart of the
    held-out behaviour-cloning top-1 (the scripted player's own randomness included).
    """

    returns: np.ndarray  # (episodes,) the evaluated policy
    gold: np.ndarray  # (episodes,) gold it collected
    deaths: np.ndarray  # (episodes,) its deaths
    movement_agreement: np.ndarray  # (episodes,)
    scripted_returns: np.ndarray  # (episodes,) the scripted player on the same game seeds
    scripted_gold: np.ndarray
    scripted_deaths: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over episodes, and the mean and standard error of the paired difference to the scripted player."""
        difference, stderr = paired_difference(self.returns, self.scripted_returns)
        return {
            "episodes": len(self.returns),
            "return": float(self.returns.mean()),
            "scripted_return": float(self.scripted_returns.mean()),
            "paired_difference": difference,
            "paired_difference_stderr": math.nan if stderr is None else stderr,
            "gold": float(self.gold.mean()),
            "scripted_gold": float(self.scripted_gold.mean()),
            "deaths": float(self.deaths.mean()),
            "scripted_deaths": float(self.scripted_deaths.mean()),
            "movement_agreement": float(self.movement_agreement.mean()),
        }


def paired_difference(after: Sequence[float] | np.ndarray, before: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and standard error of `after - before` over paired episodes (None with a single pair)."""
    difference = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    stderr = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(difference) > 1 else None
    return float(difference.mean()), stderr


def _as_action(value: Any, spec: dict[str, Any]) -> int | bool:
    value = value.item() if hasattr(value, "item") else value
    return int(value) if spec["type"] == "categorical" else bool(value)


def evaluate_policy(
    policy: Any,
    episodes: int = 20,
    frames: int = 300,
    seed: int = 0,
    latent_shape: tuple[int, int, int] = (8, 4, 4),
    batched: bool = False,
) -> PolicyEvaluation:
    """Play `episodes` episodes of `frames` frames with `policy`, and the scripted player on the same seeds.

    `policy` is a callable or an object with `act` (and optionally `reset()`, called at the start of
    each episode, or once when `batched`). Unbatched, it gets each frame's latent `(C, H, W)` float32
    numpy and returns `{component: int | bool}` (0-d arrays and tensors are accepted; missing
    components are 0 / False). With `batched=True` all episodes run side by side: it gets
    `(episodes, C, H, W)` and returns `{component: (episodes,)}`, e.g. a `DreamerAgent` reset with
    `batch_size=episodes` acting on `torch.from_numpy(latents)`. Episode i uses the same game seed
    for the policy and the scripted player (:func:`evaluation_seeds`: never a dataset video's seed).
    A return sums the rewards of frames 0..frames-1 (frame 0 has none): `frames - 1` actions count.
    """
    act = policy.act if hasattr(policy, "act") else policy
    seeds = [evaluation_seeds(seed, episode) for episode in range(episodes)]

    scripted = []
    for game_seed, player_seed in seeds:
        player = ScriptedPlayer()
        player.reset(player_seed)
        scripted.append(play_episode(CoinGame(latent_shape), scripted_policy(player), game_seed, frames))

    games = [CoinGame(latent_shape) for _ in seeds]
    # The scripted player's choice on the policy's own observations (its draws do not touch the game).
    shadows = [ScriptedPlayer() for _ in seeds]
    rewards = np.zeros((episodes, frames))
    gold = np.zeros((episodes, frames), np.int64)
    deaths = np.zeros((episodes, frames), bool)
    agree = np.zeros((episodes, frames), bool)
    alive = np.zeros((episodes, frames), bool)

    def start(episode: int) -> tuple[np.ndarray, dict[str, Any]]:
        game_seed, player_seed = seeds[episode]
        shadows[episode].reset(player_seed)
        return games[episode].reset(game_seed)

    def advance(episode: int, t: int, chosen: Mapping[str, Any], info: dict[str, Any]):
        actions = {name: _as_action(chosen[name], spec) for name, spec in DEFAULT_ACTION_SPACE.items() if name in chosen}
        expected = shadows[episode].act(info["observation"])
        alive[episode, t] = not info["dead"]
        agree[episode, t] = alive[episode, t] and actions.get("movement", 0) == expected["movement"]
        if t + 1 == frames:
            return None, info
        latent, rewards[episode, t + 1], info = games[episode].step(actions)
        gold[episode, t + 1], deaths[episode, t + 1] = info["gold"], info["death"]
        return latent, info

    if batched:
        if hasattr(policy, "reset"):
            policy.reset()
        latents, infos = map(list, zip(*(start(episode) for episode in range(episodes))))
        for t in range(frames):
            chosen = act(np.stack(latents))
            for episode in range(episodes):
                latents[episode], infos[episode] = advance(
                    episode, t, {name: values[episode] for name, values in chosen.items()}, infos[episode]
                )
    else:
        for episode in range(episodes):
            if hasattr(policy, "reset"):
                policy.reset()
            latent, info = start(episode)
            for t in range(frames):
                latent, info = advance(episode, t, act(latent), info)
    return PolicyEvaluation(
        returns=rewards.sum(1),
        gold=gold.sum(1),
        deaths=deaths.sum(1),
        movement_agreement=agree.sum(1) / np.maximum(alive.sum(1), 1),
        scripted_returns=np.array([episode.total_reward for episode in scripted]),
        scripted_gold=np.array([episode.gold.sum() for episode in scripted]),
        scripted_deaths=np.array([episode.death.sum() for episode in scripted]),
    )


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
