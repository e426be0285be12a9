"""The stage interface carries a new stage without any change to the loop: a toy stage, written here in a few
lines and registered for the test, trains through `training.loop.train` with checkpoints and exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.stages import STAGES, AgentStage, StepLosses


class RewardOnlyStage(AgentStage):
    """Toy stage: only the reward head trains, on clean frames, with the reward loss alone."""

    name = "reward_only"
    description = "Toy stage: reward prediction on clean frames"
    loss_terms = ("reward",)

    def configure_trainable(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("reward_head."))

    def compute_losses(self, model, batch, generator, unwrapped) -> StepLosses:
        latents = batch["latents"].float()
        out = model(latents, torch.ones(latents.shape[:2], device=latents.device))
        loss, count, logs = self.reward_loss(out, batch, unwrapped)
        return StepLosses({"reward": loss}, {"reward": count}, logs)


@pytest.fixture
def toy_stage_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES, RewardOnlyStage.name, RewardOnlyStage)


def test_a_new_stage_trains_checkpoints_and_resumes_exactly(toy_stage_registered, run_training, tmp_path: Path) -> None:
    common = ("--stage", "reward_only", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "0")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    metrics = run_training(straight, *common)
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_training(resumed, *common, "--resume_from_checkpoint", "latest")

    final = load_file(str(straight / "final" / "model.safetensors"))
    assert final.keys() == (again := load_file(str(resumed / "final" / "model.safetensors"))).keys()
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert set(load_file(str(straight / "checkpoint-4" / "rms_state.safetensors"))) == {"reward.ema_sq", "reward.steps"}
    # Only what the stage trains changed: the reward head moved, everything else is its initial value.
    start = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    changed = {k for k in final if not torch.equal(final[k], start[k])}
    assert changed and all(k.startswith("reward_head.") for k in changed)
    assert "eval/reward_auc" in metrics  # evaluation is inherited from the agent stage


def test_the_registry_is_what_the_command_line_accepts(toy_stage_registered) -> None:
    from training.arguments import parse_arguments

    args = parse_arguments(["--dataset_path", "x", "--stage", "reward_only"], STAGES)
    assert isinstance(STAGES[args.training.stage](args), RewardOnlyStage)
