"""Two-process CPU DDP through `accelerate launch` (gloo): same weights and normaliser state on both
processes, disjoint shards of one global draw sequence, and exact resume with 2 processes. Slow (each
launch starts two Python processes): run with `make test-slow`."""

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
pytestmark = pytest.mark.slow


def launch(train_argv, output: Path, *extra: str) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port", "29533", str(ROOT / "tests" / "rank_probe.py"),  # train.py, recording each rank
        *train_argv(output, "--stage", "agent", "--per_device_train_batch_size", "2", "--seed", "5",
                    "--bc_loss_sources", "relevant", *extra),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_two_process_ddp_agrees_and_shards(train_argv, prepared_game: Path, tmp_path: Path) -> None:
    from data.sampler import MixtureSampler
    from data.schema import load_prepared
    from data.windows import WindowDataset

    launch(train_argv, tmp_path, "--max_steps", "4", "--save_steps", "0")
    ranks = [json.loads((tmp_path / f"rank_state_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["rms_state"] == ranks[1]["rms_state"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["world_size"] == 2

    # The global draw sequence, independently: batches of 2 alternate between rank 0 and rank 1.
    datasets, _ = load_prepared(prepared_game)
    windows = WindowDataset(datasets["train"], 8)
    sampler = MixtureSampler(len(windows), windows.relevant_windows(), 0.5, seed=5)
    sequence = [list(pair) for pair in zip(*(a.tolist() for a in sampler.epoch_sequence(0)))]
    batches = [sequence[i:i + 2] for i in range(0, 16, 2)]
    assert ranks[0]["windows"] == [d for b in batches[0::2] for d in b]
    assert ranks[1]["windows"] == [d for b in batches[1::2] for d in b]


def test_two_process_resume_is_exact(train_argv, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(train_argv, straight, "--max_steps", "4", "--save_steps", "2")
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    launch(train_argv, resumed, "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "latest")
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for rank in (0, 1):
        x = json.loads((straight / f"rank_state_{rank}.json").read_text())
        y = json.loads((resumed / f"rank_state_{rank}.json").read_text())
        assert x["weights_sha256"] == y["weights_sha256"] and x["rms_state"] == y["rms_state"]
        assert x["windows"][-4:] == y["windows"]  # the resumed run trained on exactly the remaining draws
