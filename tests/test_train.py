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


@pytest.mark.parametrize("fault", ["nan_latents", "inf_gradients"])
def test_nonfinite_step_is_skipped_and_counted(run_training, tmp_path: Path, fault: str, monkeypatch) -> None:
    """A NaN loss, or a finite loss whose gradients are not finite: the optimiser step is dropped (weights,
    optimiser moments and normalisers untouched), counted, its NaN grad norm logged, and training goes on.
    The faults are injected at optimiser step 2 (global_step 1) by replacing the loop's pieces."""
    from training import loop

    stage_losses, backward = loop.stage_losses, loop.backward

    def nan_latents(run, batch, generator):
        if run.state.global_step == 1:
            batch = {**batch, "latents": torch.full_like(batch["latents"], float("nan"))}
        return stage_losses(run, batch, generator)

    def inf_gradients(run, total):  # a finite loss whose gradients overflow
        backward(run, total * float("inf") if run.state.global_step == 1 else total)

    if fault == "nan_latents":
        monkeypatch.setattr(loop, "stage_losses", nan_latents)
    else:
        monkeypatch.setattr(loop, "backward", inf_gradients)
    run_training(tmp_path, "--stage", "agent", "--max_steps", "3", "--save_steps", "1", "--eval_steps", "0")
    before, after = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    for file in ("model.safetensors", "rms_state.safetensors"):
        assert same_tensors(load_file(str(before / file)), load_file(str(after / file))), file
    moments_before, moments_after = optimizer_moments(before), optimizer_moments(after)
    assert all(torch.equal(moments_before[i], moments_after[i]) for i in moments_before)
    records = step_records(tmp_path / "metrics.jsonl")
    assert [records[s]["skipped_steps"] for s in (1, 2, 3)] == [0, 1, 1]
    if fault == "inf_gradients":
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
        "sources": tuple(sources),
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
    """The share of examples run in independent-frame mode is the configured ratio (the earlier
    pipeline ignored its own flag)."""
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


def test_agent_losses_weigh_offset_zero_as_configured(make_stage) -> None:
    """The stage passes `mtp_first_offset_weight` to both multi-token losses."""
    from training.objectives import mtp_policy_loss, mtp_reward_loss

    stage, model = make_stage(AgentStage, "--mtp_first_offset_weight", "0.7", "--reward_loss_sources", "uniform", "relevant",
                              "--bc_loss_sources", "uniform", "relevant")
    batch = random_batch(model, 2, 5, sources=[0, 1])
    batch["reward"][0, 2], batch["reward"][1, 4] = 1.0, -2.0
    model.eval()
    with torch.no_grad():  # the reward head starts at zero (every offset's loss alike): give it some opinion
        for param in model.reward_head.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    out = model(batch["latents"].float(), torch.ones(2, 5), torch.full((2, 5), 1.0 / model.config.k_max))
    loss, _, logs = stage.reward_loss(out, batch, model)
    valid = torch.ones(2, 5, dtype=torch.bool)
    expected = mtp_reward_loss(out.reward_logits.float(), batch["reward"], valid, model.reward_bins(), first_offset_weight=0.7)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    uniform = mtp_reward_loss(out.reward_logits.float(), batch["reward"], valid, model.reward_bins())
    assert abs(loss.item() - uniform.loss.item()) > 1e-4  # the option changes the loss
    space = model.config.action_space
    bc, _, _ = stage.behaviour_cloning_loss(out, batch, model)
    logits = {name: value.float() for name, value in out.policy_logits.items()}
    expected = mtp_policy_loss(logits, {name: batch[name] for name in space}, valid, space, first_offset_weight=0.7)
    assert bc.item() == pytest.approx(expected.loss.item(), rel=1e-6)


def test_reward_loss_weight_scales_the_normalised_reward_term(make_stage) -> None:
    """`reward_loss_weight 3`: the loop's sum of RMS-normalised terms counts the reward term three times. A fresh
    normaliser's first estimate is the loss itself, so every present term normalises to exactly 1."""
    from training.objectives import LossNormalizer

    stage, _ = make_stage(AgentStage, "--reward_loss_weight", "3")
    assert stage.loss_weights() == {"reward": 3.0}
    losses = {"dynamics": torch.tensor(0.02), "reward": torch.tensor(0.9), "bc": torch.tensor(2.5)}
    counts = {name: torch.tensor(5) for name in losses}
    total, _ = LossNormalizer(stage.loss_terms).combine(losses, counts, stage.loss_weights())
    assert total.item() == pytest.approx(1.0 + 3.0 + 1.0)
    default, _ = make_stage(AgentStage)
    total, _ = LossNormalizer(default.loss_terms).combine(losses, counts, default.loss_weights())
    assert total.item() == pytest.approx(3.0)


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


def test_a_bug_inside_a_loss_keeps_its_traceback(train_argv, tmp_path: Path, monkeypatch, capsys) -> None:
    """A shape bug deep in a loss function is not turned into a one-line error: it reaches the user as the
    exception it is, with the frame that raised it. Bad input still ends in one line naming the argument."""
    import traceback

    import train
    from training import objectives

    def buggy_reward_loss(reward_logits, rewards, *args, **kwargs):
        return reward_logits[..., :3] @ rewards.T  # (B, T, L+1, 3) @ (T, B): shapes that cannot multiply

    monkeypatch.setattr(objectives, "mtp_reward_loss", buggy_reward_loss)
    with pytest.raises(RuntimeError) as caught:
        train.main(train_argv(tmp_path / "bug", "--stage", "agent", "--max_steps", "1"))
    assert "buggy_reward_loss" in "".join(traceback.format_tb(caught.value.__traceback__))
    capsys.readouterr()  # the failed run's progress bar
    with pytest.raises(SystemExit) as stopped:
        train.main(train_argv(tmp_path / "bad", "--stage", "agent", "--learning_rate", "0.1",
                              "--lr_scheduler_type", "constant", "--warmup_steps", "5"))
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["train.py: error: lr_scheduler_type=constant ignores warmup_steps; use constant_with_warmup"]
