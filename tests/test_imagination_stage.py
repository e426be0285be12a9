"""Stage `imagination` (phase 3) through the loop: what trains, the saved behavioural prior, the value range,
exact resume, and what it refuses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_dreamer.errors import RunError
from training.stages.imagination import return_range

IMAGINE = ("--stage", "imagination", "--imagination_horizon", "3", "--imagination_num_steps", "2",
           "--imagination_context", "4", "--eval_steps", "0", "--max_eval_windows", "4")


@pytest.fixture(scope="module")
def phase2_agent(run_training, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phase2")
    run_training(out, "--stage", "agent", "--max_steps", "2", "--eval_steps", "0", "--max_eval_windows", "4")
    return out / "final"


def test_only_policy_and_value_heads_train_and_the_prior_is_saved(run_training, phase2_agent: Path, tmp_path: Path) -> None:
    from modeling_dreamer import DreamerAgentModel

    metrics = run_training(tmp_path, *IMAGINE, "--init_from", str(phase2_agent), "--max_steps", "2", "--save_steps", "0")
    before = load_file(str(phase2_agent / "model.safetensors"))
    after = load_file(str(tmp_path / "final" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("policy_head.", "value_head.")) for k in changed)
    assert any(k.startswith("policy_head.") for k in changed) and any(k.startswith("value_head.") for k in changed)
    # The prior is the phase-2 policy head, saved with the model.
    for key, tensor in before.items():
        if key.startswith("policy_head."):
            assert torch.equal(after["prior_policy_head." + key.removeprefix("policy_head.")], tensor), key
    model = DreamerAgentModel.from_pretrained(tmp_path / "final")
    assert model.config.use_behavior_prior and model.prior_policy_head is not None
    # The value head's range holds every return of the data's rewards at the discount.
    from data.schema import load_prepared

    schema = load_prepared(json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
                           ["arguments"]["dataset_path"])[1]
    assert model.config.value_bins_range == return_range(schema.reward_min, schema.reward_max, 0.997)
    for key in ("eval/imagined_return", "eval/imagined_return_prior", "eval/positive_share", "eval/kl_to_prior",
                "eval/value_loss", "eval/value_error", "eval/entropy/movement", "eval/bc_top1/movement",
                "eval/bc_top1_prior/movement"):
        assert key in metrics, key


def test_imagination_resumes_bitwise(run_training, phase2_agent: Path, tmp_path: Path) -> None:
    common = (*IMAGINE, "--init_from", str(phase2_agent), "--max_steps", "4", "--save_steps", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(straight, *common)
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_training(resumed, *common, "--resume_from_checkpoint", "latest")
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Phase 3's terms are not RMS-normalised: the checkpoint's normaliser state holds no term.
    assert load_file(str(straight / "checkpoint-4" / "rms_state.safetensors")) == {}
    assert load_file(str(resumed / "checkpoint-4" / "rms_state.safetensors")) == {}


def test_phase3_sums_its_raw_losses_and_clips_each_head_alone(run_training, phase2_agent: Path, tmp_path: Path) -> None:
    run_training(tmp_path, *IMAGINE, "--init_from", str(phase2_agent), "--max_steps", "2", "--save_steps", "0",
                 "--max_grad_norm", "0.5")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if "loss/policy" in r]
    assert steps and not any(k.startswith(("loss_normalized/", "rms/")) for r in steps for k in r)
    for record in steps:  # one norm per head, the total their root sum of squares
        assert record["grad_norm"] == pytest.approx(math.hypot(record["grad_norm/policy"], record["grad_norm/value"]),
                                                    rel=1e-5)


def test_imagination_arguments_are_checked(run_training, phase2_agent: Path, tmp_path: Path) -> None:
    from training.arguments import parse_arguments
    from training.stages import STAGES

    for value in ("0", "-2"):
        with pytest.raises(ValueError, match="imagination_context must be >= 1"):
            parse_arguments(["--dataset_path", "x", "--stage", "imagination", "--imagination_context", value], STAGES)
    with pytest.raises(RunError, match="imagination_context 9 is longer than window_length 8"):
        run_training(tmp_path / "a", *IMAGINE, "--init_from", str(phase2_agent), "--max_steps", "1",
                     "--imagination_context", "9")
    with pytest.raises(RunError, match="time_context_length does not apply to stage imagination"):
        run_training(tmp_path / "b", *IMAGINE, "--init_from", str(phase2_agent), "--max_steps", "1",
                     "--time_context_length", "2")


def test_imagination_needs_a_phase2_agent(run_training, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="needs --init_from"):
        run_training(tmp_path / "a", *IMAGINE, "--max_steps", "1")
    run_training(tmp_path / "dynamics", "--stage", "dynamics", "--max_steps", "1", "--eval_steps", "0")
    with pytest.raises(RunError, match="holds a DreamerModel; stage imagination improves a phase-2 agent"):
        run_training(tmp_path / "b", *IMAGINE, "--max_steps", "1", "--init_from", str(tmp_path / "dynamics" / "final"))


def test_return_range_holds_the_discounted_extremes_and_starts_the_value_at_zero() -> None:
    low, high = return_range(-10.0, 4.0, 0.9)  # returns in [-100, 40]: symlog [-4.62, 3.71]
    assert low < -4.615 and high > 3.714
    assert low == -high  # a zero-initialised value head decodes to 0
    from modeling_dreamer.distributions import twohot_bins, twohot_decode

    assert float(twohot_decode(torch.zeros(255), twohot_bins(255, low, high))) == pytest.approx(0.0, abs=1e-5)
