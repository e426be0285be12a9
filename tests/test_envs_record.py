"""envs.record: any gymnasium env with discrete actions, recorded as an HF dataset of frames, actions, rewards and
episode ends; replaying the recorded actions from the recorded seeds reproduces it exactly. Also the action-space
mapping, the frame resizing and the errors for environments and policies that do not qualify."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # CartPole draws with pygame; no display here

import envs  # noqa: E402,F401  (registers CoinGame-v0)
from envs.action_mapping import ActionMapping  # noqa: E402
from envs.frames import env_frame, resize_frame  # noqa: E402
from envs.record import main as record_main  # noqa: E402
from envs.record import record_episodes  # noqa: E402
from envs.recording import load_recording  # noqa: E402

SCRIPTED = "envs.scripted_player:scripted_policy"


def needs_pygame() -> None:
    pytest.importorskip("pygame", reason="CartPole renders with pygame (the envs extra)")


def replay(recording: Path) -> int:
    """Replay every recorded episode from its seed with its recorded actions, checking rewards, episode ends
    and frames against the rows; returns the number of steps replayed."""
    dataset, metadata = load_recording(recording)
    env = gym.make(metadata["env_id"], render_mode="rgb_array", **metadata["env_kwargs"])
    mapping = ActionMapping(env.action_space)  # rebuilt from the env, and what the recording stored
    assert mapping.describe() == metadata["action_mapping"]
    names = list(mapping.action_space)
    rows = dataset
    episode_column = np.array(dataset["episode"])
    size = tuple(metadata["frame_size"])
    replayed = 0
    for episode, seed in enumerate(metadata["episode_seeds"]):
        indices = np.flatnonzero(episode_column == episode)
        episode_rows = [rows[int(i)] for i in indices]
        assert [row["frame_index"] for row in episode_rows] == list(range(len(indices)))
        observation, _ = env.reset(seed=seed)
        first = episode_rows[0]
        assert first["reward"] == 0.0
        np.testing.assert_array_equal(np.asarray(first["frame"]), env_frame(env, observation, metadata["frame_source"], size))
        for t, row in enumerate(episode_rows[:-1]):
            assert row["has_action"] and not row["terminated"] and not row["truncated"]
            observation, reward, terminated, truncated, _ = env.step(mapping.to_env({name: row[name] for name in names}))
            replayed += 1
            if metadata["max_steps"] is not None and t + 1 >= metadata["max_steps"]:
                truncated = truncated or not terminated  # the recorder's cap
            following = episode_rows[t + 1]
            assert following["reward"] == reward
            assert (following["terminated"], following["truncated"]) == (terminated, truncated)
            np.testing.assert_array_equal(np.asarray(following["frame"]), env_frame(env, observation, metadata["frame_source"], size))
        last = episode_rows[-1]
        assert not last["has_action"] and (last["terminated"] or last["truncated"])
        assert all(last[name] in (0, False) for name in names)
    return replayed


def test_coin_game_recording_replays_exactly(tmp_path):
    """The scripted player on CoinGame-v0 (frames from its rgb_array rendering): two 30-frame episodes, each
    truncated by the env after 29 steps; replaying them gives the same rewards, flags and frames."""
    out = tmp_path / "coin"
    assert record_main(["--env", "CoinGame-v0", "--policy", SCRIPTED, "--episodes", "2", "--seed", "5", "--frame-size", "32",
                        "--output", str(out), "--env-kwargs", '{"frames": 30}', "--no-progress"]) == 0
    metadata = json.loads((out / "recording.json").read_text())
    assert metadata["episode_lengths"] == [29, 29] and metadata["episode_ends"] == {"terminated": 0, "truncated": 2, "capped": 0}
    assert metadata["frame_source"] == "render" and metadata["frame_size"] == [32, 32]
    assert replay(out) == 58
    dataset, _ = load_recording(out)
    assert sum(dataset["reward"]) == pytest.approx(sum(metadata["returns"])) and sum(metadata["returns"]) != 0


def test_cartpole_recording_replays_exactly_with_terminations_and_the_step_cap(tmp_path):
    needs_pygame()
    ended = record_episodes("CartPole-v1", tmp_path / "ended", "random", episodes=3, seed=0, frame_size=24, progress=False)
    assert ended["episode_ends"]["terminated"] == 3 and ended["frame_source"] == "render"
    assert replay(tmp_path / "ended") == sum(ended["episode_lengths"])
    capped = record_episodes("CartPole-v1", tmp_path / "capped", "random", episodes=2, seed=0, frame_size=24, max_steps=5,
                             progress=False)
    assert capped["episode_lengths"] == [5, 5] and capped["episode_ends"] == {"terminated": 0, "truncated": 2, "capped": 2}
    assert replay(tmp_path / "capped") == 10


def test_recording_is_an_hf_dataset_with_its_metadata_and_is_deterministic(tmp_path):
    import datasets

    kwargs = dict(episodes=2, seed=3, frame_size=16, max_steps=6, env_kwargs={"frames": 50}, progress=False)
    metadata = record_episodes("CoinGame-v0", tmp_path / "a", "random", **kwargs)
    record_episodes("CoinGame-v0", tmp_path / "b", "random", **kwargs)
    a, b = load_recording(tmp_path / "a")[0], load_recording(tmp_path / "b")[0]
    assert a.data.table.equals(b.data.table)
    assert isinstance(a.features["frame"], datasets.Image) and a.features["movement"] == datasets.Value("int64")
    assert a.features["ability_q"] == datasets.Value("bool") and len(a) == metadata["frames"] == 14
    assert np.asarray(a[0]["frame"]).shape == (16, 16, 3)
    # The folder is in the Hub's layout: load_dataset reads it as it is.
    hub = datasets.load_dataset(str(tmp_path / "a"), split="train", cache_dir=str(tmp_path / "cache"))
    assert hub.features == a.features and hub["reward"] == a["reward"]
    assert (tmp_path / "a" / "README.md").read_text().startswith("---\nconfigs:")
    assert metadata["env_id"] == "CoinGame-v0" and metadata["policy"] == "random"
    assert metadata["episode_seeds"] == [3, 4] and metadata["action_mapping"]["action_space"]["movement"] == {
        "type": "categorical", "n": 18}
    # A folder in use is not overwritten unless asked.
    with pytest.raises(ValueError, match="--output .* exists and is not empty"):
        record_episodes("CoinGame-v0", tmp_path / "a", "random", **kwargs)
    record_episodes("CoinGame-v0", tmp_path / "a", "random", overwrite=True, **kwargs)


class NoFramesEnv(gym.Env):
    """Vector observations and no rendering at all: nothing to record frames from."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


def not_a_policy(observation):
    return 0


NOT_CALLABLE = 3


@pytest.mark.parametrize("env_id,policy,message", [
    ("NoSuchEnv-v0", "random", r"--env 'NoSuchEnv-v0': .*NoSuchEnv"),
    ("Pendulum-v1", "random", r"--env 'Pendulum-v1': action space Box.* is continuous"),
    ("NoFramesForTests-v0", "random", r"--env 'NoFramesForTests-v0': no frames to record: its observations are not images"),
    ("CoinGame-v0", "no_such_module_here:policy", r"module 'no_such_module_here' not found"),
    ("CoinGame-v0", "envs.scripted_player", r"expected MODULE:CALLABLE"),
    ("CoinGame-v0", "envs.scripted_player:no_such_policy", r"module 'envs.scripted_player' has no attribute 'no_such_policy'"),
    ("CoinGame-v0", "tests.test_envs_record:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not callable"),
    ("CoinGame-v0", "tests.test_envs_record:not_a_policy", r"must accept \(env, observation, rng\)"),
])
def test_record_refuses_what_does_not_qualify_naming_it(tmp_path, env_id, policy, message):
    if env_id == "NoFramesForTests-v0" and env_id not in gym.registry:
        gym.register(env_id, entry_point=NoFramesEnv)
    with pytest.raises(ValueError, match=message):
        record_episodes(env_id, tmp_path / "out", policy, episodes=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_record_command_line_reports_errors_as_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        record_main(["--env", "Pendulum-v1", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "is continuous" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--episodes must be an integer >= 1"):
        record_episodes("CoinGame-v0", tmp_path / "out", episodes=0)


def wrong_action_policy(env, observation, rng):
    return {"movement": 99}


def test_a_policy_returning_a_bad_action_is_named_with_its_step(tmp_path):
    with pytest.raises(ValueError, match=r"--policy 'tests.test_envs_record:wrong_action_policy' at episode 0, step 0"):
        record_episodes("CoinGame-v0", tmp_path / "out", "tests.test_envs_record:wrong_action_policy", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # the partial folder is gone too


def test_action_mapping_names_and_round_trips():
    space = spaces.Dict([
        ("move", spaces.Discrete(3, start=-1)),
        ("aim", spaces.MultiDiscrete([[2, 3], [4, 5]])),
        ("keys", spaces.MultiBinary(2)),
        ("jump", spaces.MultiBinary(1)),
        ("nested", spaces.Dict([("fire", spaces.Discrete(2))])),
    ])
    mapping = ActionMapping(space)
    assert mapping.action_space == {
        "move": {"type": "categorical", "n": 3},
        **{f"aim_{i}": {"type": "categorical", "n": n} for i, n in enumerate([2, 3, 4, 5])},
        "keys_0": {"type": "binary"}, "keys_1": {"type": "binary"}, "jump": {"type": "binary"},
        "nested_fire": {"type": "categorical", "n": 2},
    }
    values = {"move": 0, "aim_0": 1, "aim_1": 2, "aim_2": 3, "aim_3": 0, "keys_0": True, "keys_1": False, "jump": True,
              "nested_fire": 1}
    action = mapping.to_env(values)
    assert action in space and action["move"] == -1  # class 0 is the space's start
    np.testing.assert_array_equal(action["aim"], [[1, 2], [3, 0]])
    assert mapping.from_env(action) == values
    rng = np.random.default_rng(0)
    assert all(mapping.sample(rng) in space for _ in range(20))
    assert ActionMapping(spaces.Discrete(4)).action_space == {"action": {"type": "categorical", "n": 4}}
    tuple_mapping = ActionMapping(spaces.Tuple([spaces.Discrete(2), spaces.MultiBinary(2)]))
    assert list(tuple_mapping.action_space) == ["action_0", "action_1_0", "action_1_1"]
    assert tuple_mapping.from_env(tuple_mapping.to_env({"action_0": 1, "action_1_0": 0, "action_1_1": 1})) == {
        "action_0": 1, "action_1_0": False, "action_1_1": True}
    batch = ActionMapping(spaces.Discrete(4)).to_env_batch({"action": np.array([0, 3, 2])})
    assert batch == [0, 3, 2]
    with pytest.raises(ValueError, match="takes classes 0..3"):
        ActionMapping(spaces.Discrete(4)).to_env({"action": 4})
    with pytest.raises(ValueError, match="is continuous"):
        ActionMapping(spaces.Dict([("steer", spaces.Box(-1, 1, (1,)))]))
    with pytest.raises(ValueError, match="nothing to choose"):
        ActionMapping(spaces.Discrete(1))


def test_frames_are_resized_by_area_averaging():
    frame = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    half = resize_frame(frame, 2)
    expected = frame.reshape(2, 2, 2, 2, 3).astype(float).mean(axis=(1, 3))
    np.testing.assert_allclose(half, expected, atol=0.5 + 1e-9)  # the box mean, rounded
    wide = np.zeros((2, 4, 3), np.uint8)
    wide[:, 2:] = 200
    np.testing.assert_array_equal(resize_frame(wide, 2)[..., 0], [[0, 200], [0, 200]])  # stretched, not cropped
    assert resize_frame(frame, (4, 4)) is not None and resize_frame(frame, 4).shape == (4, 4, 3)
