"""From pixels of an environment nobody here wrote: a CartPole recording -> the tokenizer stage -> `data.prepare
--episodes` (latents encoded frame by frame, episode ends kept) -> an agent that predicts episode ends -> phase 3,
whose returns stop at predicted ends. Tiny sizes: the plumbing, not the learning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = {"hidden_size": 32, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "time_every": 2, "num_latent_tokens": 4, "latent_token_dim": 8,
             "latent_channels": 8, "latent_height": 2, "latent_width": 2}
DYNAMICS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "time_every": 2, "num_register_tokens": 1, "k_max": 4, "mtp_length": 2, "num_bins": 17,
            "head_hidden_size": 16, "head_layers": 1}


def train(*argv: str) -> dict[str, float]:
    from training.arguments import parse_arguments
    from training.loop import train as run
    from training.stages import STAGES

    args = parse_arguments(list(argv), STAGES)
    return run(STAGES[args.training.stage](args), args)


COMMON = ("--report_to", "none", "--logging_steps", "1", "--save_steps", "0", "--eval_steps", "0", "--seed", "1",
          "--learning_rate", "0.003", "--warmup_steps", "1", "--per_device_eval_batch_size", "4")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cartpole")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    subprocess.run([sys.executable, "-m", "envs.record", "--env", "CartPole-v1", "--policy", "random", "--episodes", "8",
                    "--seed", "0", "--frame-size", "32", "--max-steps", "30", "--output", str(root / "recording"),
                    "--no-progress"], cwd=ROOT, env=env, check=True, capture_output=True)
    train("--stage", "tokenizer", "--dataset_path", str(root / "recording"), "--output_dir", str(root / "tokenizer"),
          "--model_overrides", json.dumps(TOKENIZER), "--window_length", "4", "--per_device_train_batch_size", "4",
          "--max_steps", "2", "--validation_episode_fraction", "0.25", *COMMON)
    from data.prepare import main as prepare

    assert prepare(["--episodes", str(root / "recording"), "--tokenizer", str(root / "tokenizer" / "final"),
                    "--output", str(root / "prepared"), "--validation-fraction", "0.25", "--no-progress"]) == 0
    return {"root": root, "recording": root / "recording", "tokenizer": root / "tokenizer" / "final",
            "prepared": root / "prepared"}


def test_episodes_are_encoded_frame_by_frame_into_videos_with_their_ends(pipeline: dict[str, Path]) -> None:
    from data.schema import load_prepared
    from data.windows import WindowDataset
    from envs.recording import read_frames
    from modeling_dreamer import DreamerTokenizer
    from modeling_dreamer.agent import tokenizer_identity

    datasets, schema = load_prepared(pipeline["prepared"])
    frames, columns, metadata = read_frames(pipeline["recording"], columns=["reward", "terminated", "truncated"])
    rows = sum(len(split) for split in datasets.values())
    assert rows == len(frames)
    tokenizer = DreamerTokenizer.from_pretrained(pipeline["tokenizer"]).eval()
    assert schema.tokenizer["hash"] == tokenizer_identity(tokenizer)[1]
    split = datasets["train"]
    episode = split.filter(lambda r: r["video_id"] == split[0]["video_id"])
    number = int(split[0]["video_id"].split("_")[1])
    recorded = np.flatnonzero(columns["episode"] == number)
    # Latents: the tokenizer's, one frame at a time through its cache.
    cache, expected = tokenizer.new_cache(), []
    for row in recorded:
        expected.append(tokenizer.encode(torch.from_numpy(frames[row])[None, None], past_key_values=cache)[0, 0])
    stored = torch.tensor(np.array(episode["latents"], np.float32)).reshape(len(recorded), *schema.latent_shape)
    torch.testing.assert_close(stored, torch.stack(expected).half().float(), atol=2e-3, rtol=0)
    assert episode["reward"] == pytest.approx(columns["reward"][recorded].tolist())
    assert episode["terminated"] == columns["terminated"][recorded].tolist()
    assert episode["truncated"] == columns["truncated"][recorded].tolist()
    assert episode["terminated"][-1] or episode["truncated"][-1]
    # Windows never span two episodes.
    windows = WindowDataset(split, 4, stride=1)
    for i in range(len(windows)):
        window = windows[i]
        assert len(set(np.diff(window["frame_index"]))) == 1 and not window["terminated"][:-1].any(), i


def test_an_agent_learns_episode_ends_and_phase3_stops_at_them(pipeline: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from modeling_dreamer import DreamerAgentModel

    common = ("--dataset_path", str(pipeline["prepared"]), "--window_length", "6", "--per_device_train_batch_size",
              "4", "--max_eval_windows", "4", *COMMON)
    metrics = train("--stage", "agent", "--output_dir", str(pipeline["root"] / "agent"), "--model_overrides",
                    json.dumps(DYNAMICS), "--max_steps", "2", "--save_steps", "2", *common)
    assert "eval/continuation_auc" in metrics
    rms = load_file(str(pipeline["root"] / "agent" / "checkpoint-2" / "rms_state.safetensors"))
    assert "continuation.ema_sq" in rms
    model = DreamerAgentModel.from_pretrained(pipeline["root"] / "agent" / "final")
    assert model.config.continuation_head and model.config.tokenizer_hash
    phase3 = train("--stage", "imagination", "--output_dir", str(pipeline["root"] / "imagination"), "--init_from",
                   str(pipeline["root"] / "agent" / "final"), "--max_steps", "1", "--imagination_horizon", "3",
                   "--imagination_num_steps", "1", "--imagination_context", "3", *common)
    assert "eval/imagined_return" in phase3


def test_the_player_refuses_a_tokenizer_the_agent_was_not_trained_on(pipeline: dict[str, Path]) -> None:
    """Same latent shape, other weights: the agent would read its latents as something else."""
    from envs.agent_player import AgentPlayer
    from envs.environment import open_env
    from modeling_dreamer import DreamerAgentModel, DreamerTokenizer

    agent_dir = pipeline["root"] / "agent" / "final"
    if not agent_dir.is_dir():  # trained by the test above; alone, train a minimal one
        train("--stage", "agent", "--dataset_path", str(pipeline["prepared"]), "--output_dir",
              str(pipeline["root"] / "agent"), "--model_overrides", json.dumps(DYNAMICS), "--max_steps", "1",
              "--window_length", "6", "--per_device_train_batch_size", "4", "--max_eval_windows", "4", *COMMON)
    assert DreamerAgentModel.from_pretrained(agent_dir).config.tokenizer_hash
    torch.manual_seed(1)
    other = DreamerTokenizer(DreamerTokenizer.from_pretrained(pipeline["tokenizer"]).config)
    other.save_pretrained(pipeline["root"] / "other_tokenizer")
    opened = open_env("CartPole-v1", frames=False)
    try:
        AgentPlayer(agent_dir, pipeline["tokenizer"], opened.mapping, device="cpu")  # its own: accepted
        with pytest.raises(ValueError, match=r"other_tokenizer.*trained on the latents of tokenizer"):
            AgentPlayer(agent_dir, pipeline["root"] / "other_tokenizer", opened.mapping, device="cpu")
    finally:
        opened.close()
