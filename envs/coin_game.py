"""The coin game: the demo's steppable world, pure numpy, and the latent a tokenizer could see of a frame.

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

The latent of frame t is what a tokenizer could see at t, computed before the action at t is chosen:
player, coin and enemy positions (Gaussian bumps), health, a gold flash on the pickup frame, a death
flash on the death frame, and the direction from the player to the coin as (cos, sin) constant over
the frame (zero when no coin is shown or the player is dead): a global feature, so attention can
pool it without knowing where it looked. Plus noise 0.1; stored as float16.

:class:`CoinGame` is the game itself (seeded with an int or a tuple of ints, actions as a dict);
`envs.coin_env.CoinGameEnv` is the same game behind the gymnasium API (`CoinGame-v0`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data.schema import RewardSpec
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE

FPS = 20
HOME = (0.1, 0.1)
BASE_CHANNELS = 8
NUM_SLICES = int(DEFAULT_ACTION_SPACE["movement"]["n"])  # 18 slices of 20 degrees
SLICE_DEGREES = 360.0 / NUM_SLICES
NOISE_SD = 0.1  # of the latent noise

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
        noise = NOISE_SD * self._noise_rng.standard_normal(self.latent_shape, dtype=np.float32)
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

    # Every base map lies in [-BASE_BOUND, BASE_BOUND]: bumps, health and flashes in [0, 1], cos and
    # sin in [-1, 1], gold / 100 in [0, 1.5] (at most 150 gold per coin).
    BASE_BOUND = 1.5

    def __init__(self, latent_shape: tuple[int, int, int]):
        channels, height, width = latent_shape
        self.ys, self.xs = np.meshgrid(
            (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij"
        )
        self.mixing = np.random.default_rng(channels).normal(0, 0.5, (channels - BASE_CHANNELS, BASE_CHANNELS))

    def bound(self) -> float:
        """A bound on |value| of every noiseless latent value: the base maps' bound times the largest
        absolute row sum of the mixing (1 for the base channels themselves)."""
        largest = float(np.abs(self.mixing).sum(axis=1).max()) if len(self.mixing) else 0.0
        return self.BASE_BOUND * max(1.0, largest)

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
