"""envs.evaluate and envs.pairing: returns per episode on seeds that pair across runs, the paired difference of two
runs (on hand numbers), and a trained agent playing from pixels through its tokenizer, batched in lockstep."""

from __future__ import annotations

import json
import math
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # CartPole draws with pygame; no display here

import envs  # noqa: E402,F401  (registers CoinGame-v0)
from envs.evaluate import evaluate_episodes  # noqa: E402
from envs.evaluate import main as evaluate_main  # noqa: E402
from envs.pairing import mean_and_stderr, pair  # noqa: E402
from envs.pairing import main as pairing_main  # noqa: E402

SCRIPTED = "envs.scripted_player:scripted_policy"
SHORT_GAME = {"frames": 40}


def test_pair_on_hand_numbers(tmp_path, capsys):
    """Episodes pair by seed, in any order: a - b = 2, 3, 0 -> mean 5/3; sample variance
    ((1/3)^2 + (4/3)^2 + (5/3)^2) / 2 = 7/3, standard error sqrt(7/9)."""
    a = {"env": "X-v0", "seeds": [0, 1, 2], "returns": [3.0, 5.0, 4.0]}
    b = {"env": "X-v0", "seeds": [2, 0, 1], "returns": [4.0, 1.0, 2.0]}
    result = pair(a, b)
    assert result["mean"] == pytest.approx(5 / 3) and result["stderr"] == pytest.approx(math.sqrt(7 / 9))
    assert result["episodes"] == 3
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert pair(tmp_path / "a.json", tmp_path / "b.json") == result
    assert pairing_main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert json.loads(capsys.readouterr().out) == result
    assert pair({**a, "seeds": [0], "returns": [1.0]}, {**b, "seeds": [0], "returns": [0.5]})["stderr"] is None
    with pytest.raises(ValueError, match="episode seeds differ"):
        pair(a, {**b, "seeds": [0, 1, 3]})
    with pytest.raises(ValueError, match="different environments"):
        pair(a, {**b, "env": "Y-v0"})
    with pytest.raises(FileNotFoundError, match="a file .* does not exist"):
        pair(tmp_path / "missing.json", b)
    assert mean_and_stderr([1.0, 2.0, 6.0]) == (3.0, pytest.approx(math.sqrt(7 / 3)))


def test_evaluation_seeds_pair_up_across_runs(tmp_path):
    """Same seeds -> the same returns for the same policy; two policies on the same seeds -> pair() is the mean and
    standard error of their per-episode differences."""
    kwargs = dict(episodes=3, seed=7, env_kwargs=SHORT_GAME, progress=False)
    scripted = evaluate_episodes("CoinGame-v0", policy=SCRIPTED, **kwargs)
    again = evaluate_episodes("CoinGame-v0", policy=SCRIPTED, **kwargs)
    still = evaluate_episodes("CoinGame-v0", policy="random", **kwargs)
    assert scripted["seeds"] == [7, 8, 9] and scripted["returns"] == again["returns"]
    assert scripted["lengths"] == [39, 39, 39] and scripted["returns"] != still["returns"]
    assert scripted["mean"] == pytest.approx(np.mean(scripted["returns"]))
    assert scripted["stderr"] == pytest.approx(np.std(scripted["returns"], ddof=1) / math.sqrt(3))
    differences = np.subtract(scripted["returns"], still["returns"])
    paired = pair(scripted, still)
    assert paired["mean"] == pytest.approx(differences.mean())
    assert paired["stderr"] == pytest.approx(differences.std(ddof=1) / math.sqrt(3))


def test_evaluate_command_line_writes_the_result(tmp_path):
    output = tmp_path / "runs" / "random.json"
    assert evaluate_main(["--env", "CoinGame-v0", "--policy", "random", "--episodes", "2", "--seed", "0", "--max-steps", "5",
                          "--output", str(output), "--env-kwargs", json.dumps(SHORT_GAME), "--no-progress"]) == 0
    result = json.loads(output.read_text())
    assert {"returns", "lengths", "mean", "stderr", "seeds", "env", "policy", "steps_per_second"} <= set(result)
    assert result["lengths"] == [5, 5] and result["seeds"] == [0, 1] and result["env"] == "CoinGame-v0"


def test_evaluate_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="either --policy or --agent"):
        evaluate_episodes("CoinGame-v0")
    with pytest.raises(ValueError, match="--agent needs --tokenizer"):
        evaluate_episodes("CoinGame-v0", agent=tmp_path)
    with pytest.raises(ValueError, match="is continuous"):
        evaluate_episodes("Pendulum-v1", policy="random")
    with pytest.raises(SystemExit):
        evaluate_main(["--env", "CoinGame-v0", "--policy", "nowhere_at_all:policy", "--output", str(tmp_path / "x.json")])
    assert "module 'nowhere_at_all' not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_agent(tmp_path_factory):
    """A tiny (untrained) tokenizer for 64x64 frames and an agent reading its (16, 4, 4) latents, acting in
    CartPole's action space (`action`: categorical 2), saved as folders."""
    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerTokenizer, DreamerTokenizerConfig

    root = tmp_path_factory.mktemp("agent")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = DreamerTokenizer(DreamerTokenizerConfig.from_preset("tiny", num_encoder_layers=2, num_decoder_layers=2,
                                                                    time_every=2))
    tokenizer.save_pretrained(root / "tokenizer")
    channels, height, width = tokenizer.config.latent_shape
    config = DreamerConfig(
        latent_channels=channels, latent_height=height, latent_width=width, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, time_every=2, num_register_tokens=1, k_max=4,
        action_space={"action": {"type": "categorical", "n": 2}}, num_tasks=1, num_agent_tokens=1, mtp_length=1,
        num_bins=11, head_hidden_size=16, head_layers=1,
    )
    DreamerAgentModel(config).save_pretrained(root / "agent")
    yield root
    torch.set_num_threads(threads)


class FixedLengthEnv(gym.Env):
    """Image observations (64x64 RGB, used as the frames directly), Discrete(2) actions, reward 1 per step, and an
    episode of 3 + seed % 3 steps whatever is done; stepping an ended episode is an error."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = 3 + (seed or 0) % 3
        return self.np_random.integers(0, 256, (64, 64, 3), dtype=np.uint8), {}

    def step(self, action):
        if self.left <= 0:
            raise RuntimeError("stepped after the episode ended")
        self.left -= 1
        return self.np_random.integers(0, 256, (64, 64, 3), dtype=np.uint8), 1.0, self.left == 0, False, {}


def test_an_agent_plays_from_pixels_batched_in_lockstep(tiny_agent):
    """Episodes of different lengths in one lockstep batch: each ends when its env says so and is never stepped
    again; a run pairs with a rerun of the same arguments; one batch and one episode at a time both play."""
    if "FixedLengthForTests-v0" not in gym.registry:
        gym.register("FixedLengthForTests-v0", entry_point=FixedLengthEnv)
    kwargs = dict(agent=tiny_agent / "agent", tokenizer=tiny_agent / "tokenizer", episodes=3, seed=0, progress=False,
                  device="cpu")
    together = evaluate_episodes("FixedLengthForTests-v0", **kwargs)
    assert together["lengths"] == [3, 4, 5] and together["returns"] == [3.0, 4.0, 5.0] and together["batch_size"] == 3
    alone = evaluate_episodes("FixedLengthForTests-v0", batch_size=1, **kwargs)
    assert alone["lengths"] == [3, 4, 5] and alone["batch_size"] == 1
    capped = evaluate_episodes("FixedLengthForTests-v0", max_steps=4, **kwargs)
    assert capped["lengths"] == [3, 4, 4]


def test_an_agent_evaluation_is_reproducible_and_checks_its_action_space(tiny_agent):
    """CartPole from its rgb_array rendering, greedy and sampled: the same arguments give the same returns (so
    agent runs pair up too); an agent of another action space is refused, naming both sides."""
    pytest.importorskip("pygame", reason="CartPole renders with pygame (the envs extra)")
    kwargs = dict(agent=tiny_agent / "agent", tokenizer=tiny_agent / "tokenizer", episodes=3, seed=0, max_steps=15,
                  progress=False, device="cpu")
    for greedy in (True, False):
        first = evaluate_episodes("CartPole-v1", greedy=greedy, **kwargs)
        second = evaluate_episodes("CartPole-v1", greedy=greedy, **kwargs)
        assert first["returns"] == second["returns"] and first["lengths"] == second["lengths"]
        assert all(1 <= n <= 15 for n in first["lengths"]) and first["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"--agent .* acts in .* but the env's actions map to"):
        evaluate_episodes("CoinGame-v0", **{**kwargs, "episodes": 1})
