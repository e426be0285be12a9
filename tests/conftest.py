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
