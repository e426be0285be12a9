"""envs.coin_game / scripted_player / coin_evaluation: the steppable demo game, its scripted player, and policy
evaluation on paired seeds (moved from tests/test_data_synthetic.py, assertions unchanged); and the game as the
gymnasium env CoinGame-v0."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.action_mapping import ActionMapping
from envs.coin_env import CoinGameEnv, coin_action_space, to_env_action
from envs.coin_evaluation import evaluate_policy
from envs.coin_game import HOME, CoinGame, game_streams, heading_slice, moving_slice, neighbour_slice, slice_heading
from envs.coin_play import evaluation_seeds, video_seeds
from envs.pairing import paired_difference
from envs.scripted_player import ScriptedPlayer, scripted_policy
from modeling_dreamer.action_space import DEFAULT_ACTION_SPACE, LOL_BINARY_KEYS


def test_heading_slices():
    assert [heading_slice(np.radians(d)) for d in (0, 19.9, 20, 185, 359, -10)] == [0, 0, 1, 9, 17, 17]


def test_movement_slices_and_slice_zero():
    """0 stands still; k >= 1 walks along its slice centre 20k + 10 degrees; headings inside slice 0
    go to the nearer of slices 17 (350 degrees) and 1 (30 degrees)."""
    assert slice_heading(0) is None
    assert math.degrees(slice_heading(1)) == pytest.approx(30.0)
    assert math.degrees(slice_heading(17)) == pytest.approx(350.0)
    assert [moving_slice(np.radians(d)) for d in (5, 9.9, 10, 15, 185, 270)] == [17, 17, 1, 1, 9, 13]
    assert all(moving_slice(np.radians(d)) != 0 for d in np.arange(0, 360, 0.5))
    assert [neighbour_slice(17, 1), neighbour_slice(1, -1), neighbour_slice(5, 1), neighbour_slice(5, -1)] == [1, 17, 6, 4]
    with pytest.raises(ValueError):
        slice_heading(18)


def test_step_moves_the_player_along_the_slice_centre():
    game = CoinGame()
    game.reset(5)
    np.testing.assert_allclose(game.player, HOME)
    game.step({"movement": 2})  # 50 degrees
    expected = np.array(HOME) + 0.035 * np.array([math.cos(math.radians(50)), math.sin(math.radians(50))])
    np.testing.assert_allclose(game.player, expected, atol=1e-12)
    game.step({"movement": 0})
    np.testing.assert_allclose(game.player, expected, atol=1e-12)


def _random_actions(rng: np.random.Generator) -> dict:
    return {"movement": int(rng.integers(0, 18)), **{key: bool(rng.random() < 0.05) for key in LOL_BINARY_KEYS}}


def test_game_is_deterministic_from_the_seed():
    def play(seed):
        game, rng = CoinGame(), np.random.default_rng(0)
        latent, _ = game.reset(seed)
        latents, rewards = [latent], []
        for _ in range(150):
            latent, reward, _ = game.step(_random_actions(rng))
            latents.append(latent)
            rewards.append(reward)
        return np.stack(latents), np.array(rewards)

    (a, ra), (b, rb), (c, _) = play(7), play(7), play(8)
    assert a.shape == (151, 8, 4, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)
    assert not np.array_equal(a, c)
    assert np.array_equal(a, a.astype(np.float16).astype(np.float32))  # the stored precision


def test_observation_at_t_does_not_depend_on_the_action_at_t():
    """Two runs that agree up to frame t and act differently at t: identical latents for frames <= t,
    different ones at t + 1. The direction channels show the direction from the player to the coin
    (state), not the heading the player takes."""
    t = 12

    def run(action_at_t: int):
        game = CoinGame()
        latent, info = game.reset(3)
        latents, observations = [latent], [info["observation"]]
        for frame in range(t + 1):
            latent, _, info = game.step({"movement": action_at_t if frame == t else 4})
            latents.append(latent)
            observations.append(info["observation"])
        return np.stack(latents), observations

    (a, observations), (b, _) = run(4), run(13)
    np.testing.assert_array_equal(a[: t + 1], b[: t + 1])
    assert not np.array_equal(a[t + 1], b[t + 1])
    for latent, observation in zip(a, observations):
        direction = observation.coin_direction()
        expected = (0.0, 0.0) if direction is None else (math.cos(direction), math.sin(direction))
        # Channels 6, 7 are constant maps plus noise 0.1: their mean over 16 cells has sd 0.025.
        np.testing.assert_allclose(latent[6:8].mean(axis=(1, 2)), expected, atol=0.12)


class OracleCheater:
    """Plays from the game's true state: walks straight at the coin (the nearest moving slice), never
    idles while a coin is shown, knocks the enemy away whenever it is within reach."""

    def __init__(self, game: CoinGame):
        self.game = game

    def act(self, latent: np.ndarray) -> dict:
        game = self.game
        actions = {"movement": 0, **dict.fromkeys(LOL_BINARY_KEYS, False)}
        if game.dead_for > 0:
            return actions
        if game.coin is not None:
            dx, dy = game.coin - game.player
            actions["movement"] = moving_slice(math.atan2(dy, dx))
        actions["ability_q"] = bool(math.dist(game.enemy, game.player) < game.rules.knock_radius + game.rules.speed)
        return actions


def test_a_better_policy_collects_clearly_more_than_the_scripted_player():
    """Headroom for reinforcement learning: on paired seeds, an oracle earns far more than the data's
    player (whose returns evaluate_policy reports for the same seeds)."""
    episodes, frames = 12, 300
    baseline = evaluate_policy(lambda latent: {"movement": 0}, episodes=episodes, frames=frames, seed=0)
    oracle_returns = []
    for episode in range(episodes):
        game = CoinGame()
        oracle = OracleCheater(game)
        latent, _ = game.reset(evaluation_seeds(0, episode)[0])
        total = 0.0
        for _ in range(frames - 1):
            latent, reward, _ = game.step(oracle.act(latent))
            total += reward
        oracle_returns.append(total)
    oracle_returns = np.array(oracle_returns)
    scripted = baseline.scripted_returns
    assert oracle_returns.mean() > 1.5 * scripted.mean() > 0
    assert (oracle_returns > scripted).mean() >= 0.9
    # Standing still earns nothing (the coins never come to the player) and is not the data's behaviour.
    assert np.all(baseline.returns <= 0) and np.all(baseline.gold == 0)


class DirectionReader:
    """A policy of the latent alone: heads along the coin direction shown by channels 6 and 7."""

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1

    def act(self, latent: np.ndarray) -> dict:
        cos, sin = latent[..., 6:8, :, :].mean(axis=(-2, -1)).T
        moving = np.hypot(cos, sin) > 0.5
        movement = np.array([moving_slice(math.atan2(s, c)) for c, s in zip(np.atleast_1d(cos), np.atleast_1d(sin))])
        return {"movement": np.where(np.atleast_1d(moving), movement, 0).reshape(np.shape(cos))}


class ScriptedTwin:
    """Plays what the scripted player would, by running its own copy of evaluation episode i's game
    (the i-th reset); it checks that each latent it is shown is its copy's."""

    def __init__(self, seed: int):
        self.seed, self.episode = seed, -1

    def reset(self):
        self.episode += 1
        game_seed, player_seed = evaluation_seeds(self.seed, self.episode)
        self.game, self.player = CoinGame(), ScriptedPlayer()
        self.player.reset(player_seed)
        self.latent, self.info = self.game.reset(game_seed)

    def act(self, latent: np.ndarray) -> dict:
        np.testing.assert_array_equal(latent, self.latent)
        actions = self.player.act(self.info["observation"])
        self.latent, _, self.info = self.game.step(actions)
        return actions


def test_evaluate_policy_pairs_seeds_and_batches_exactly():
    episodes, frames = 4, 120
    # The scripted player's own choices, replayed: same returns as the scripted baseline, full agreement.
    twin = evaluate_policy(ScriptedTwin(seed=1), episodes=episodes, frames=frames, seed=1)
    np.testing.assert_array_equal(twin.returns, twin.scripted_returns)
    np.testing.assert_array_equal(twin.movement_agreement, np.ones(episodes))
    assert twin.scripted_deaths.sum() + twin.scripted_gold.sum() > 0

    single, batched = DirectionReader(), DirectionReader()
    one = evaluate_policy(single, episodes=episodes, frames=frames, seed=1)
    many = evaluate_policy(batched, episodes=episodes, frames=frames, seed=1, batched=True)
    assert single.resets == episodes and batched.resets == 1
    for field in ("returns", "gold", "deaths", "movement_agreement", "scripted_returns"):
        np.testing.assert_array_equal(getattr(one, field), getattr(many, field))
    np.testing.assert_array_equal(one.scripted_returns, twin.scripted_returns)
    np.testing.assert_allclose(one.returns, 0.01 * one.gold - 10 * one.deaths)
    # Heading straight at the coin is not the scripted player's 40-degree-off choice.
    assert np.all(one.movement_agreement < 0.5)
    # Evaluation worlds are not dataset videos.
    assert evaluation_seeds(0, 0)[0] != video_seeds(0, 0)[0]


def test_the_scripted_player_is_a_noisy_biased_expert():
    """The flaws that behaviour cloning copies: idles on about 10% of the frames a coin is shown, takes
    a neighbouring slice on about 20% of its moves, and otherwise heads 40 degrees off the coin."""
    player, game = ScriptedPlayer(), CoinGame()
    idle = moves = neighbour = shown = 0
    for episode in range(4):
        player.reset((9, episode))
        _, info = game.reset((8, episode))
        for _ in range(300):
            observation = info["observation"]
            actions = player.act(observation)
            direction = observation.coin_direction()
            if direction is not None and not actions["recall_b"]:
                shown += 1
                if actions["movement"] == 0:
                    idle += 1
                else:
                    moves += 1
                    neighbour += actions["movement"] != moving_slice(direction + math.radians(40))
            else:
                assert actions["movement"] == 0
            _, _, info = game.step(actions)
    assert 0.07 < idle / shown < 0.13 and 0.16 < neighbour / moves < 0.24


def test_paired_difference_mean_and_standard_error() -> None:
    # Differences 2, 3, 0: mean 5/3; sample variance ((1/3)^2 + (4/3)^2 + (5/3)^2) / 2 = 7/3; s.e. sqrt(7/9).
    mean, stderr = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0])
    assert mean == pytest.approx(5 / 3)
    assert stderr == pytest.approx((7 / 9) ** 0.5)
    assert paired_difference([1.0], [0.5]) == (0.5, None)


# ---------------------------------------------------------------------------------------------------
# CoinGame-v0: the game behind the gymnasium API
# ---------------------------------------------------------------------------------------------------


def test_coin_game_env_passes_the_gymnasium_checker_without_warnings(recwarn):
    env = gym.make(envs.COIN_GAME_ID, render_mode="rgb_array")
    check_env(env.unwrapped)
    assert [str(w.message) for w in recwarn] == []
    assert env.observation_space.shape == (8, 4, 4) and env.observation_space.dtype == np.float32
    assert list(env.action_space.keys()) == list(DEFAULT_ACTION_SPACE)
    # Its actions map onto the default action space exactly (categorical movement, binary keys).
    assert ActionMapping(env.action_space).action_space == DEFAULT_ACTION_SPACE
    assert env.metadata["render_modes"] == ["rgb_array"]


def test_coin_game_env_is_the_game_and_its_episodes_end_truncated():
    """reset(seed=s) plays CoinGame().reset(s); scripted_policy given the scripted player's generator plays
    ScriptedPlayer's actions; an episode of `frames` frames is frames - 1 steps, the last one truncated, none
    terminated (the game has no terminal state)."""
    frames, seed, player_seed = 60, 11, (4, 0)
    env = gym.make(envs.COIN_GAME_ID, frames=frames, latent_shape=(16, 4, 4))
    observation, _ = env.reset(seed=seed)
    game, player = CoinGame((16, 4, 4)), ScriptedPlayer()
    player.reset(player_seed)
    latent, info = game.reset(seed)
    rng = game_streams(player_seed, 1)[0]  # the generator ScriptedPlayer.reset(player_seed) makes
    steps, total = 0, 0.0
    while True:
        np.testing.assert_array_equal(observation, latent)
        assert observation in env.observation_space
        action = scripted_policy(env.unwrapped, observation, rng)
        expected = player.act(info["observation"])
        assert ActionMapping(env.action_space).from_env(action) == expected
        observation, reward, terminated, truncated, _ = env.step(action)
        latent, game_reward, info = game.step(expected)
        steps, total = steps + 1, total + reward
        assert reward == game_reward and not terminated
        if truncated:
            break
    np.testing.assert_array_equal(observation, latent)
    assert steps == frames - 1 and total != 0
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(action)


def test_coin_game_env_actions_round_trip():
    space = coin_action_space()
    mapping = ActionMapping(space)
    actions = {"movement": 7, **{key: key in ("ability_q", "recall_b") for key in LOL_BINARY_KEYS}}
    env_action = to_env_action(actions)
    assert env_action in space
    assert mapping.from_env(env_action) == actions
    assert mapping.to_env(actions).keys() == env_action.keys()
    assert all(np.array_equal(mapping.to_env(actions)[k], env_action[k]) for k in env_action)
    env = CoinGameEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown action components"):
        env.step({"jump": 1})


def test_the_board_shows_the_player_coin_enemy_and_the_flashes():
    env = CoinGameEnv(render_mode="rgb_array", render_size=48)
    assert CoinGameEnv().render() is None  # no render_mode, no frame
    observation, _ = env.reset(seed=2)
    rng = np.random.default_rng(0)
    painter = env.painter
    seen = {"gold": False, "plain": False}
    for _ in range(200):
        image = env.render()
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        colours = {tuple(c) for c in image.reshape(-1, 3)}
        assert painter.ENEMY in colours
        assert (painter.PLAYER in colours) == (env.game.observation.player is not None)
        assert (painter.BAR in colours) == (env.game.health_bar_visible and env.game.observation.health > 0)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        flashed = bool((border == painter.GOLD_FLASH).all(axis=1).all())
        assert flashed == (env.game.observation.gold > 0)
        seen["gold" if flashed else "plain"] = True
        observation, *_ = env.step(scripted_policy(env, observation, rng))
    assert all(seen.values())
    np.testing.assert_array_equal(env.render(), env.render())
