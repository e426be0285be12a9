"""The training loop with the `dynamics` and `agent` stages on a small generated game: checkpoints, the final
model, exact resume, the non-finite guard, a frozen backbone, loss routing and the independent-frames ratio.
Runs call the loop and the stages directly (tests/conftest.py: `run_training`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.stages import AgentStage, DynamicsStage


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_records(path: Path) -> dict[int, dict]:
    """Per-step training records, without wall-clock fields."""
    return {
        r["step"]: {k: v for k, v in r.items() if k != "elapsed_s"}
        for r in read_jsonl(path) if "skipped_steps" in r
    }


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dynamics_run(run_training, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dynamics")
    run_training(out, "--stage", "dynamics", "--max_steps", "3", "--save_steps", "2",
                 "--dynamics_loss_sources", "uniform", "relevant")
    return out


def test_dynamics_stage_writes_checkpoint_and_final(dynamics_run: Path) -> None:
    from modeling_dreamer import DreamerAgentModel, DreamerModel

    checkpoint = dynamics_run / "checkpoint-2"
    assert (checkpoint / "rms_state.safetensors").is_file()
    rms = load_file(str(checkpoint / "rms_state.safetensors"))
    assert int(rms["dynamics.steps"]) == 2  # one normaliser update per step
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert (dynamics_run / "checkpoint-3").is_dir()  # the final step is checkpointed too
    model = DreamerModel.from_pretrained(dynamics_run / "final")
    assert model.config.architectures == ["DreamerModel"]
    grown = DreamerAgentModel.from_backbone(str(dynamics_run / "final"))
    backbone = load_file(str(dynamics_run / "final" / "model.safetensors"))
    for name, tensor in backbone.items():
        assert torch.equal(grown.dreamer.state_dict()[name], tensor), name
    setup = read_jsonl(dynamics_run / "metrics.jsonl")[0]
    # The choice by device: none on the CPU, bf16 (or fp16 on older GPUs) on CUDA.
    expected = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "no"
    assert setup["setup"] and setup["world_size"] == 1 and setup["mixed_precision"] == expected
    assert setup["global_batch_size"] == 4


def test_agent_stage_from_backbone_and_reload(run_training, dynamics_run: Path, tmp_path: Path) -> None:
    from modeling_dreamer import DreamerAgentModel

    metrics = run_training(tmp_path, "--stage", "agent", "--init_from", str(dynamics_run / "final"),
                           "--max_steps", "2", "--save_steps", "1", "--bc_loss_sources", "uniform", "relevant")
    assert (tmp_path / "checkpoint-1" / "rms_state.safetensors").is_file()
    rms = load_file(str(tmp_path / "checkpoint-2" / "rms_state.safetensors"))
    assert set(rms) == {f"{t}.{b}" for t in ("dynamics", "reward", "bc") for b in ("ema_sq", "steps")}
    model = DreamerAgentModel.from_pretrained(tmp_path / "final")
    assert model.config.architectures == ["DreamerAgentModel"]
    # What inference reads: the time context trained with (half the window of 8, so that most trained frames
    # see no start frame, as in a live stream) and the context signal level.
    assert model.config.time_context_length == 4 and model.config.context_signal_level == 0.9
    for key in ("eval/reward_auc", "eval/bc_top1/movement", "eval/twohot_clamped_share", "eval/dynamics_loss",
                "eval/reward_mae/offset_3", "eval/bc_top1/movement/offset_3", "eval/bc_majority/movement",
                "eval/reward_ap/offset_3", "eval/bc_balanced_accuracy/movement", "eval/probe/reward_auc",
                "eval/probe/bc_top1/movement"):
        assert key in metrics, key
    binary = [name for name, spec in model.config.action_space.items() if spec["type"] == "binary"]
    assert binary and all(f"eval/bc_ap/{name}/offset_0" in metrics and f"eval/probe/bc_auc/{name}" in metrics
                          for name in binary)
    assert metrics["eval/probe/train_frames"] > 0  # fitted on the run's training windows (bind_data)
    setup = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert setup["origin"]["init"] == "grown from backbone"
    # Per-group learning rates as configured: backbone 0.3 x, agent and heads 1 x the base rate.
    assert setup["learning_rates"]["backbone"] == pytest.approx(0.003 * 0.3)
    assert setup["learning_rates"]["heads"] == pytest.approx(0.003)
    assert setup["learning_rates"]["agent_no_decay"] == pytest.approx(0.003)


def test_model_card_is_a_hub_card_without_local_paths(run_training, dynamics_run: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    metrics = run_training(tmp_path, "--stage", "agent", "--init_from", str(dynamics_run / "final"), "--max_steps", "1")
    card = ModelCard.load(tmp_path / "final" / "README.md")
    assert card.data.library_name == "transformers" and "dreamerv4" in card.data.tags
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert reported["eval/reward_auc"] == pytest.approx(metrics["eval/reward_auc"], abs=1e-6)
    text = (tmp_path / "final" / "README.md").read_text()
    assert str(tmp_path) not in text and "/tmp" not in text and "github.com" not in text
    assert "setup" not in text.lower().split("## held-out")[0].split("## training")[1]  # no internal fields


def test_resume_continues_bitwise(run_training, tmp_path: Path) -> None:
    """4 steps straight == 2 steps, then resume from checkpoint-2 for 2 more (losses, weights, RMS state)."""
    common = ("--stage", "agent", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "0",
              "--gradient_accumulation_steps", "2")
    straight = tmp_path / "straight"
    run_training(straight, *common)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    state = json.loads((resumed / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["draws_in_epoch"] > 0  # the resume point is inside an epoch
    run_training(resumed, *common, "--resume_from_checkpoint", "latest")

    assert same_tensors(load_file(str(straight / "final" / "model.safetensors")),
                        load_file(str(resumed / "final" / "model.safetensors")))
    assert same_tensors(load_file(str(straight / "checkpoint-4" / "rms_state.safetensors")),
                        load_file(str(resumed / "checkpoint-4" / "rms_state.safetensors")))
    steps_a, steps_b = step_records(straight / "metrics.jsonl"), step_records(resumed / "metrics.jsonl")
    assert steps_a[3] == steps_b[3] and steps_a[4] == steps_b[4]
    # And the run really learned something different from its start (the test can fail).
    start = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    assert not same_tensors(start, load_file(str(straight / "final" / "model.safetensors")))


def test_weight_average_is_the_final_model_and_resumes_bitwise(run_training, tmp_path: Path) -> None:
    """With `weight_average_start 0.5` over 4 steps, the final model is the mean of the live weights after steps
    3 and 4 (the checkpoints keep the live weights), and a resume from step 3 ends bitwise where the straight
    run ends."""
    common = ("--stage", "agent", "--max_steps", "4", "--save_steps", "1", "--eval_steps", "0",
              "--weight_average_start", "0.5")
    straight = tmp_path / "straight"
    run_training(straight, *common)
    live3 = load_file(str(straight / "checkpoint-3" / "model.safetensors"))
    live4 = load_file(str(straight / "checkpoint-4" / "model.safetensors"))
    final = load_file(str(straight / "final" / "model.safetensors"))
    shared = sorted(set(final) & set(live3))
    assert len(shared) > 10
    moved = [k for k in shared if not torch.equal(live3[k], live4[k])]
    assert moved  # the last step changed weights, so the mean differs from either end
    for key in shared:
        assert torch.allclose(final[key], (live3[key] + live4[key]) / 2, atol=1e-6), key
    assert not any(torch.equal(final[k], live4[k]) for k in moved)
    assert int(load_file(str(straight / "checkpoint-4" / "weight_average.safetensors"))["count"]) == 2

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(resumed, *common, "--resume_from_checkpoint", "latest")
    assert same_tensors(final, load_file(str(resumed / "final" / "model.safetensors")))
    assert same_tensors(load_file(str(straight / "checkpoint-4" / "weight_average.safetensors")),
                        load_file(str(resumed / "checkpoint-4" / "weight_average.safetensors")))


def optimizer_moments(checkpoint: Path) -> dict[int, torch.Tensor]:
    return {i: s["exp_avg"] for i, s in torch.load(checkpoint / "optimizer.bin", weights_only=False)["state"].items()}


@pytest.mark.parametrize("fault", ["--debug_nan_at_step", "--debug_inf_grad_at_step"])
def test_nonfinite_step_is_skipped_and_counted(run_training, tmp_path: Path, fault: str) -> None:
    """A NaN loss, or a finite loss whose gradients are not finite: the optimiser step is dropped (weights,
    optimiser moments and normalisers untouched), counted, its NaN grad norm logged, and training goes on."""
    run_training(tmp_path, "--stage", "agent", "--max_steps", "3", "--save_steps", "1", fault, "1", "--eval_steps", "0")
    before, after = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    for file in ("model.safetensors", "rms_state.safetensors"):
        assert same_tensors(load_file(str(before / file)), load_file(str(after / file))), file
    moments_before, moments_after = optimizer_moments(before), optimizer_moments(after)
    assert all(torch.equal(moments_before[i], moments_after[i]) for i in moments_before)
    records = step_records(tmp_path / "metrics.jsonl")
    assert [records[s]["skipped_steps"] for s in (1, 2, 3)] == [0, 1, 1]
    if fault == "--debug_inf_grad_at_step":
        assert records[2]["grad_norm"] != records[2]["grad_norm"]  # NaN is logged, not dropped
    # Step 3 trains again, and the final weights are finite.
    final = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert not same_tensors(final, load_file(str(after / "model.safetensors")))
    assert all(torch.isfinite(v).all() for v in final.values())


def test_frozen_backbone_is_bitwise_unchanged(run_training, dynamics_run: Path, tmp_path: Path) -> None:
    run_training(tmp_path, "--stage", "agent", "--init_from", str(dynamics_run / "final"),
                 "--freeze_backbone", "true", "--max_steps", "2", "--save_steps", "0", "--eval_steps", "0")
    backbone = load_file(str(dynamics_run / "final" / "model.safetensors"))
    agent = load_file(str(tmp_path / "final" / "model.safetensors"))
    for name, tensor in backbone.items():
        assert torch.equal(agent[f"dreamer.{name}"], tensor), name
    setup = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert not any(g.startswith("backbone") for g in setup["learning_rates"])
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss/bc" in r]
    assert records and all("loss/dynamics" not in r for r in records)  # no dynamics gradient is computed


# ---- one micro-batch through the stages, with a small real model ----

def random_batch(model, batch_size: int, frames: int, sources: list[int]) -> dict:
    config = model.config
    shape = (config.latent_channels, config.latent_height, config.latent_width)
    batch = {
        "latents": torch.randn(batch_size, frames, *shape).half(),
        "reward": torch.zeros(batch_size, frames),
        "has_action": torch.ones(batch_size, frames, dtype=torch.bool),
        "source": torch.tensor(sources),
    }
    for name, spec in config.action_space.items():
        batch[name] = (torch.randint(0, spec["n"], (batch_size, frames)) if spec["type"] == "categorical"
                       else torch.rand(batch_size, frames) < 0.5)
    return batch


def test_loss_routing_by_draw_source(make_stage) -> None:
    stage, model = make_stage(AgentStage, "--bc_loss_sources", "relevant",
                                    "--reward_loss_sources", "uniform", "--dynamics_loss_sources", "uniform")
    batch = random_batch(model, 2, 5, sources=[0, 1])
    batch["has_action"][1, 2] = False  # one unlabeled action in the relevant example
    result = stage.compute_losses(model, batch, torch.Generator().manual_seed(0), model)
    horizon = model.config.mtp_length
    # Targets (t, n) with t + n < 5 in one example: sum over n of (5 - n).
    per_example = sum(5 - n for n in range(horizon + 1))
    assert int(result.counts["reward"]) == per_example  # the uniform example only
    # BC on the relevant example, minus the targets that point at its unlabeled frame 2 (one per offset n <= 2).
    assert int(result.counts["bc"]) == per_example - (min(horizon, 2) + 1)
    assert int(result.counts["dynamics"]) == 5  # frames of the uniform example
    assert set(result.losses) == set(stage.loss_terms) == {"dynamics", "reward", "bc"}


def test_examples_outside_the_dynamics_loss_are_observed_at_the_context_level(make_stage) -> None:
    stage, model = make_stage(AgentStage, "--dynamics_loss_sources", "uniform",
                                    "--context_signal_level", "0.75")
    batch = random_batch(model, 4, 6, sources=[0, 1, 0, 1])
    noised = stage.noised_batch(batch, torch.Generator().manual_seed(3))
    relevant = torch.tensor([False, True, False, True])
    assert torch.all(noised.tau[relevant] == 0.75)
    assert torch.all(noised.step_size[relevant] == 1.0 / model.config.k_max)
    assert torch.equal(noised.dynamics_mask.any(dim=1), ~relevant)
    k_max = model.config.k_max  # uniform examples: the shortcut grid, tau a multiple of d below 1
    assert torch.all((noised.tau[~relevant] * k_max).round() == noised.tau[~relevant] * k_max)
    assert torch.all(noised.tau[~relevant] < 1)


def test_independent_frames_share_matches_ratio(make_stage) -> None:
    """The share of examples run in independent-frame mode is the configured ratio (code review item 11)."""
    from training.loop import step_generator

    stage, model = make_stage(DynamicsStage, "--independent_frames_ratio", "0.3")
    batch = random_batch(model, 8, 3, sources=[0] * 8)
    flags = torch.stack([
        stage.noised_batch(batch, step_generator(0, step, 0, 0, torch.device("cpu"))).inputs["independent_frames"]
        for step in range(250)
    ]).float()
    assert flags.shape == (250, 8)
    assert abs(float(flags.mean()) - 0.3) < 0.03, float(flags.mean())  # 2000 Bernoulli(0.3) draws: std 0.01


def test_world_size_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.loop import check_world_size

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        check_world_size(1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world_size(1)


def test_agent_losses_weigh_offset_zero_and_reward_windows_as_configured(make_stage) -> None:
    """The stage passes `mtp_first_offset_weight` to both MTP losses and, with `reward_importance_weights`,
    each window's `p_uniform / p_sampler` (from the run's sampler) to the reward loss."""
    from types import SimpleNamespace

    from data.sampler import MixtureSampler
    from modeling_dreamer.objectives import mtp_reward_loss

    stage, model = make_stage(AgentStage, "--mtp_first_offset_weight", "0.7", "--reward_importance_weights", "true",
                              "--reward_loss_sources", "uniform", "relevant")
    sampler = MixtureSampler(10, [3], relevant_fraction=0.5)
    stage.bind_data(SimpleNamespace(train_windows=None, sampler=sampler))
    batch = random_batch(model, 2, 5, sources=[0, 1])
    batch["reward"][0, 2], batch["reward"][1, 4] = 1.0, -2.0
    batch["window_index"] = torch.tensor([7, 3])
    model.eval()
    with torch.no_grad():  # the reward head starts at zero (every offset's loss alike): give it some opinion
        for param in model.reward_head.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    out = model(batch["latents"].float(), torch.ones(2, 5), torch.full((2, 5), 1.0 / model.config.k_max))
    loss, _, logs = stage.reward_loss(out, batch, model)
    weights = torch.tensor([2.0, 1.0 / (0.5 + 0.5 * 10)])  # window 7: 1 / (1 - p); window 3 is the relevant one
    expected = mtp_reward_loss(out.reward_logits.float(), batch["reward"], torch.ones(2, 5, dtype=torch.bool),
                               model.reward_bins(), first_offset_weight=0.7, example_weights=weights)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    unweighted = mtp_reward_loss(out.reward_logits.float(), batch["reward"], torch.ones(2, 5, dtype=torch.bool),
                                 model.reward_bins())
    assert abs(loss.item() - unweighted.loss.item()) > 1e-4  # the options change the loss


def test_reward_loss_weight_scales_the_normalised_reward_term(make_stage) -> None:
    """`reward_loss_weight 3`: the loop's sum of RMS-normalised terms counts the reward term three times. A fresh
    normaliser's first estimate is the loss itself, so every present term normalises to exactly 1."""
    from modeling_dreamer.objectives import LossNormalizer
    from training.loop import normalize_losses

    stage, _ = make_stage(AgentStage, "--reward_loss_weight", "3")
    assert stage.loss_weights() == {"reward": 3.0}
    losses = {"dynamics": torch.tensor(0.02), "reward": torch.tensor(0.9), "bc": torch.tensor(2.5)}
    counts = {name: torch.tensor(5) for name in losses}
    total, _ = normalize_losses(LossNormalizer(stage.loss_terms), losses, counts, stage.loss_weights())
    assert total.item() == pytest.approx(1.0 + 3.0 + 1.0)
    default, _ = make_stage(AgentStage)
    total, _ = normalize_losses(LossNormalizer(default.loss_terms), losses, counts, default.loss_weights())
    assert total.item() == pytest.approx(3.0)


def test_bc_components_normalised_apart_share_one_unit_of_weight(make_stage) -> None:
    """`bc_normalization: component`: one loss term per action component (each with its own running RMS in
    the loop), weighted 1 / (number of components); their raw sum is the joint NLL of the default."""
    joint_stage, model = make_stage(AgentStage)
    stage, _ = make_stage(AgentStage, "--bc_normalization", "component")
    space = model.config.action_space
    assert joint_stage.loss_terms == ("dynamics", "reward", "bc") and joint_stage.loss_weights() == {"reward": 1.0}
    assert stage.loss_terms == ("dynamics", "reward", *(f"bc/{name}" for name in space))
    assert stage.loss_weights() == {"reward": 1.0, **{f"bc/{name}": pytest.approx(1.0 / len(space)) for name in space}}
    batch = random_batch(model, 2, 5, sources=[1, 1])
    joint = joint_stage.compute_losses(model, batch, torch.Generator().manual_seed(0), model)
    split = stage.compute_losses(model, batch, torch.Generator().manual_seed(0), model)
    parts = [split.losses[f"bc/{name}"] for name in space]
    assert sum(p.item() for p in parts) == pytest.approx(joint.losses["bc"].item(), rel=1e-5)
    assert all(int(split.counts[f"bc/{name}"]) == int(joint.counts["bc"]) for name in space)


def test_probe_baseline_fits_on_tiled_windows_whatever_the_training_stride(make_stage, prepared_game) -> None:
    """The probe's bar must not move with `window_stride` (a sampling knob): the stage keeps tiled windows of
    the training split for it."""
    from types import SimpleNamespace

    from data.schema import load_prepared
    from data.windows import WindowDataset

    datasets, _ = load_prepared(prepared_game)
    stage, _ = make_stage(AgentStage)
    overlapping = WindowDataset(datasets["train"], 8, stride=2)
    stage.bind_data(SimpleNamespace(train_windows=overlapping, datasets=datasets, sampler=None))
    tiled = WindowDataset(datasets["train"], 8)
    assert stage.probe_windows.stride == 8 and len(stage.probe_windows) == len(tiled) < len(overlapping)
    np.testing.assert_array_equal(stage.probe_windows.window_starts, tiled.window_starts)
    stage.bind_data(SimpleNamespace(train_windows=tiled, datasets=datasets, sampler=None))
    assert stage.probe_windows is tiled
