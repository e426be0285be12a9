"""Shared test fixtures: tiny model configs and models, and a small prepared dataset.

Factories are fixtures that return functions (``make_config(**overrides)``), so a test can build
several variants; the prepared dataset is built once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# A two-component action space: one categorical and one binary component, enough to exercise both
# kinds of policy output and action embedding.
SMALL_ACTION_SPACE = {"move": {"type": "categorical", "n": 5}, "jump": {"type": "binary"}}

# Model tests: fixture-sized latents (8, 4, 4), two space and two time layers, GQA 4/2, 2 agent tokens.
SMALL_MODEL_FIELDS: dict[str, Any] = dict(
    latent_channels=8, latent_height=4, latent_width=4, hidden_size=32, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, time_every=2, num_register_tokens=2, k_max=8,
    action_space=SMALL_ACTION_SPACE, num_tasks=3, num_agent_tokens=2, mtp_length=2, num_bins=11,
    head_hidden_size=16, head_layers=2,
)

# Training tests: DreamerConfig overrides of a model that trains a step in well under a second.
TRAIN_MODEL_OVERRIDES: dict[str, Any] = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
    "time_every": 2, "num_register_tokens": 2, "k_max": 4, "mtp_length": 3, "num_bins": 17,
    "head_hidden_size": 32, "head_layers": 1,
}


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: the second thread's synchronisation costs more than
    it gains (measured 2-3x slower). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_config() -> Callable[..., Any]:
    """``make_config(**overrides)`` -> a small ``DreamerConfig`` (:data:`SMALL_MODEL_FIELDS`)."""
    from modeling_dreamer import DreamerConfig

    def build(**overrides: Any) -> DreamerConfig:
        return DreamerConfig(**{**SMALL_MODEL_FIELDS, **overrides})

    return build


@pytest.fixture(scope="session")
def prepared_game(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic game (6 videos x 120 frames, latents (8, 4, 4)) prepared into a DatasetDict:
    the folder written by ``data.prepare`` (validation: 1 whole video)."""
    from data import prepare, synthetic

    root = tmp_path_factory.mktemp("game")
    assert synthetic.main(["--output", str(root / "raw"), "--num-videos", "6", "--frames", "120", "--seed", "3"]) == 0
    assert prepare.main([
        "--latents-dir", str(root / "raw" / "latents"), "--features-dir", str(root / "raw" / "features"),
        "--output", str(root / "prepared"), "--no-progress", "--validation-fraction", "0.2",
    ]) == 0
    return root / "prepared"


def training_argv(dataset: Path, output: Path, *extra: str) -> list[str]:
    """Command-line arguments of a tiny, fast training run on `dataset` into `output`."""
    import json

    return [
        "--dataset_path", str(dataset), "--output_dir", str(output), "--model_overrides", json.dumps(TRAIN_MODEL_OVERRIDES),
        "--window_length", "8", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--report_to", "none", "--logging_steps", "1", "--max_eval_windows", "8", "--learning_rate", "0.003",
        "--warmup_steps", "1", "--seed", "11", *extra,
    ]


@pytest.fixture(scope="session")
def run_training(prepared_game: Path) -> Callable[..., dict[str, float]]:
    """``run_training(output_dir, "--stage", "agent", ...)``: parse the arguments as train.py does and run the
    loop in this process on the prepared game; returns the final held-out metrics."""
    from training.arguments import parse_arguments
    from training.loop import train
    from training.stages import STAGES

    def run(output: Path, *extra: str, stages: dict[str, Any] | None = None) -> dict[str, float]:
        registry = stages or STAGES
        args = parse_arguments(training_argv(prepared_game, output, *extra), registry)
        return train(registry[args.training.stage](args), args)

    return run


@pytest.fixture(scope="session")
def make_stage(prepared_game: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Any, Any]]:
    """``make_stage(StageClass, "--key", "value", ...)`` -> (stage, model): a stage built as the loop builds it
    (arguments parsed as train.py parses them, the model built from the prepared game's schema, seed 0)."""
    from data.schema import load_prepared
    from training.arguments import parse_arguments
    from training.stages import STAGES

    schema = load_prepared(prepared_game)[1]

    def build(stage_cls: Any, *extra: str) -> tuple[Any, Any]:
        output = tmp_path_factory.mktemp("unused_output")
        stages = {**STAGES, stage_cls.name: stage_cls}
        args = parse_arguments(training_argv(prepared_game, output, "--stage", stage_cls.name, *extra), stages)
        stage = stage_cls(args)
        torch.manual_seed(0)
        model, _ = stage.build_model(schema)
        return stage, model

    return build


@pytest.fixture(scope="session")
def train_argv(prepared_game: Path) -> Callable[..., list[str]]:
    """``train_argv(output_dir, *extra)``: the command-line arguments of a tiny run on the prepared game (for
    tests that launch train.py in other processes)."""
    return lambda output, *extra: training_argv(prepared_game, output, *extra)
