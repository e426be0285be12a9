"""Stage `tokenizer` through the loop: trains on a recording of `python -m envs.record`, checkpoints and resumes
bitwise, and writes a loadable `final/` with held-out PSNR beside the downsampled baseline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"hidden_size": 32, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "time_every": 2}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recording") / "cartpole"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    subprocess.run([sys.executable, "-m", "envs.record", "--env", "CartPole-v1", "--policy", "random", "--episodes", "6",
                    "--seed", "0", "--frame-size", "32", "--max-steps", "30", "--output", str(out), "--no-progress"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return out


def tokenizer_argv(recording: Path, output: Path, *extra: str) -> list[str]:
    return ["--stage", "tokenizer", "--dataset_path", str(recording), "--output_dir", str(output),
            "--model_overrides", json.dumps(OVERRIDES), "--window_length", "4", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--report_to", "none", "--logging_steps", "1", "--learning_rate",
            "0.003", "--warmup_steps", "1", "--seed", "3", "--validation_episode_fraction", "0.34", *extra]


def run(argv: list[str]) -> dict[str, float]:
    from training.arguments import parse_arguments
    from training.loop import train
    from training.stages import STAGES

    args = parse_arguments(argv, STAGES)
    return train(STAGES[args.training.stage](args), args)


def test_tokenizer_trains_evaluates_and_resumes_bitwise(recording: Path, tmp_path: Path) -> None:
    from modeling_dreamer import DreamerTokenizer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    metrics = run(tokenizer_argv(recording, straight, "--max_steps", "4", "--save_steps", "2"))
    for key in ("eval/psnr", "eval/baseline_psnr", "eval/mse", "eval/psnr_gain_over_baseline"):
        assert key in metrics and metrics[key] == metrics[key], key
    model = DreamerTokenizer.from_pretrained(straight / "final")
    assert model.config.image_height == 32 and model.config.latent_shape == (16, 4, 4)
    rms = load_file(str(straight / "checkpoint-4" / "rms_state.safetensors"))
    assert set(rms) == {f"{t}.{b}" for t in ("reconstruction_mse", "perceptual") for b in ("ema_sq", "steps")}
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["masked_share"] <= 0.9 for r in records if "masked_share" in r)

    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(tokenizer_argv(recording, resumed, "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "latest"))
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_downsampled_baseline_keeps_as_many_numbers_as_the_latent() -> None:
    from training.stages.tokenizer import downsampled_baseline, psnr

    flat = torch.full((1, 2, 3, 8, 8), 0.25)
    assert torch.allclose(downsampled_baseline(flat, 48), flat)  # a constant image survives any downsampling
    assert psnr(flat, flat + 0.1).flatten().tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # 10 log10(1 / 0.01)


def test_a_recording_is_required(tmp_path: Path) -> None:
    from modeling_dreamer.errors import RunError

    with pytest.raises(RunError, match="not a recording"):
        run(tokenizer_argv(tmp_path / "nothing", tmp_path / "out", "--max_steps", "1"))
