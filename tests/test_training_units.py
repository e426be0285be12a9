"""Unit tests of the training helpers: optimiser groups, schedules, mixed precision, checkpoints, metrics,
and recipe parsing. Each expectation is computed independently of the code under test."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.arguments import DreamerTrainingArguments, parse_arguments, recipe_to_argv
from training.checkpointing import (
    RunError,
    TrainerState,
    finalize_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resolve_checkpoint,
)
from training.metrics import majority_rate, masked_mean, roc_auc
from training.optim import GroupScales, build_param_groups, build_scheduler, choose_mixed_precision


# ---- mixed precision by device (fp16 on CPU is silently ignored, bf16 is slow there) ----

@pytest.mark.parametrize(
    ("requested", "device", "bf16", "expected"),
    [
        ("auto", "cpu", False, "no"),
        ("auto", "mps", False, "no"),
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),
        ("no", "cuda", True, "no"),
        ("bf16", "cpu", False, "bf16"),
        ("fp16", "cuda", False, "fp16"),
    ],
)
def test_mixed_precision_choice(requested: str, device: str, bf16: bool, expected: str) -> None:
    assert choose_mixed_precision(requested, device, bf16) == expected


@pytest.mark.parametrize(("requested", "device", "bf16"), [("fp16", "cpu", False), ("fp16", "mps", False),
                                                          ("bf16", "mps", False), ("bf16", "cuda", False)])
def test_mixed_precision_refuses_what_cannot_work(requested: str, device: str, bf16: bool) -> None:
    with pytest.raises(ValueError, match=requested):
        choose_mixed_precision(requested, device, bf16)


# ---- parameter groups (no weight decay on norms, biases and embeddings) ----

def tiny_agent() -> nn.Module:
    from modeling_dreamer import DreamerAgentModel, DreamerConfig

    config = DreamerConfig(latent_channels=2, latent_height=2, latent_width=2, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, time_every=2, num_register_tokens=1, k_max=4,
                           mtp_length=1, num_bins=5, head_layers=1, action_space={"a": {"type": "binary"}})
    return DreamerAgentModel(config)


def test_param_groups_carry_scaled_lrs_and_decay_rules() -> None:
    model = tiny_agent()
    model.value_head.requires_grad_(False)
    groups = build_param_groups(model, 1e-3, 0.1, GroupScales(backbone=0.1, agent=2.0, heads=0.5))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "agent_no_decay", "heads", "heads_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {key: {names[id(p)] for p in group["params"]} for key, group in by_name.items()}
    linear_weights = {f"{m}.weight" for m, module in model.named_modules() if isinstance(module, nn.Linear)}
    # Decay exactly on the weight matrices of linear layers; roles by top-level module.
    assert members["backbone"] == {n for n in linear_weights if n.startswith("dreamer.")}
    assert "dreamer.embeddings.registers" in members["backbone_no_decay"]
    assert "dreamer.layers.0.attn_norm.weight" in members["backbone_no_decay"]
    assert members["agent_no_decay"] == {"agent_tokens.task_embed.weight", "agent_tokens.slots", "agent_norm.weight"}
    assert members["heads"] == {n for n in linear_weights if n.startswith(("reward_head.", "policy_head."))}
    assert not any(n.startswith("value_head.") for m in members.values() for n in m)  # frozen: in no group
    assert math.isclose(by_name["backbone"]["lr"], 1e-4)
    assert math.isclose(by_name["agent_no_decay"]["lr"], 2e-3)
    assert math.isclose(by_name["heads"]["lr"], 5e-4)
    assert by_name["backbone"]["weight_decay"] == 0.1 and by_name["heads_no_decay"]["weight_decay"] == 0.0
    # Every trainable parameter is in exactly one group.
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_param_groups_survive_adamw() -> None:
    model = tiny_agent()
    groups = build_param_groups(model, 1e-3, 0.1, GroupScales(backbone=0.1))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["backbone"] == pytest.approx(1e-4)


def test_parameter_roles() -> None:
    from modeling_dreamer import DreamerAgentModel

    assert DreamerAgentModel.parameter_role("dreamer.layers.0.attn.q_proj.weight") == "backbone"
    assert DreamerAgentModel.parameter_role("agent_tokens.slots") == "agent"
    assert DreamerAgentModel.parameter_role("reward_head.out.weight") == "heads"


# ---- learning-rate schedule (transformers.get_scheduler) ----

def lr_after(schedule: str, warmup: int, total: int, steps: int, **kwargs) -> float:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 2.0}])
    scheduler = build_scheduler(optimizer, schedule, warmup, total, kwargs)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"] / 2.0


def test_schedules_follow_training_arguments_semantics() -> None:
    """TrainingArguments' meaning: linear warm-up from 0 over warmup_steps, then the schedule to 0 at the end."""
    assert lr_after("cosine", 4, 104, 0) == pytest.approx(0.0)
    assert lr_after("cosine", 4, 104, 1) == pytest.approx(0.25)
    assert lr_after("cosine", 4, 104, 4) == pytest.approx(1.0)
    assert lr_after("cosine", 4, 104, 54) == pytest.approx(0.5)  # half-way through the decay: (1 + cos(pi/2)) / 2
    assert lr_after("cosine", 4, 104, 104) == pytest.approx(0.0, abs=1e-12)
    assert lr_after("linear", 4, 104, 54) == pytest.approx(0.5)
    assert lr_after("constant_with_warmup", 4, 104, 2) == pytest.approx(0.5)
    assert lr_after("constant", 0, 104, 50) == 1.0
    assert lr_after("cosine_with_min_lr", 0, 100, 100, min_lr_rate=0.1) == pytest.approx(0.1)


def test_constant_schedule_with_warmup_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="constant_with_warmup"):
        DreamerTrainingArguments(lr_scheduler_type="constant", warmup_steps=10)
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        DreamerTrainingArguments(lr_scheduler_type="reduce_lr_on_plateau")


# ---- checkpoints ----

def test_checkpoint_listing_resolution_and_pruning(tmp_path: Path) -> None:
    for step in (5, 20, 10):
        tmp = tmp_path / f"checkpoint-{step}.tmp"
        tmp.mkdir()
        TrainerState(global_step=step).save(tmp)
        finalize_checkpoint(tmp, tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-30.tmp").mkdir()  # an interrupted write is never picked
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10", "checkpoint-20"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-20"
    assert TrainerState.load(resolve_checkpoint(tmp_path, "latest")).global_step == 20
    assert resolve_checkpoint(tmp_path, None) is None
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["checkpoint-5"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]
    with pytest.raises(RunError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-30.tmp"))


def test_latest_without_checkpoints_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint in"):
        resolve_checkpoint(tmp_path / "missing", "latest")


def test_corrupt_trainer_state_is_named(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.json").write_text('{"global_step": 3, "epo')
    with pytest.raises(RunError, match="trainer_state.json: corrupt"):
        TrainerState.load(tmp_path)


# ---- metrics ----

def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # rounding creates ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert roc_auc(scores, labels) == pytest.approx(pairwise)
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_masked_mean_and_majority() -> None:
    assert masked_mean(np.array([1.0, 5.0, 3.0]), np.array([True, False, True])) == 2.0
    assert math.isnan(masked_mean(np.array([1.0]), np.array([False])))
    assert majority_rate(np.array([2, 2, 1, 7, 2]), np.array([True, True, True, True, False])) == 0.5


# ---- recipes and arguments ----

def test_recipe_then_command_line_overrides(tmp_path: Path) -> None:
    from training.stages import STAGES
    from training.stages.agent import AgentArguments

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset_path: /data/x\nstage: agent\nlearning_rate: 0.001\nbc_loss_sources: [uniform, relevant]\n"
        "model_overrides: {hidden_size: 64}\nfreeze_backbone: true\n"
    )
    args = parse_arguments(["--config", str(recipe), "--learning_rate", "0.01"], STAGES)
    assert args.data.dataset_path == "/data/x"
    assert args.training.learning_rate == 0.01  # the command line wins
    assert args.of(AgentArguments).bc_loss_sources == ["uniform", "relevant"]
    assert args.model.overrides() == {"hidden_size": 64}
    assert args.of(AgentArguments).freeze_backbone is True
    assert recipe_to_argv({"a": [1, 2], "b": None, "c": {"x": 1}}) == ["--a", "1", "2", "--c", json.dumps({"x": 1})]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    """Every refusal is an ArgumentError (one line on the command line) naming the argument."""
    from modeling_dreamer.errors import ArgumentError
    from training.stages import STAGES

    cases = [
        (["--dataset_path", "x", "--bc_loss_sources", "everything"], "bc_loss_sources: unknown draw source .everything."),
        (["--dataset_path", "x", "--stage", "imaginary"], "unknown stage"),
        (["--config", str(tmp_path / "missing.yaml")], "no such file"),
        # An argument of another stage is refused, not silently ignored.
        (["--dataset_path", "x", "--stage", "dynamics", "--bc_loss_sources", "uniform"],
         "--bc_loss_sources does not apply to stage 'dynamics'"),
        (["--dataset_path", "x", "--weight_average_start", "1.0"], "weight_average_start must be in"),
        (["--dataset_path", "x", "--time_context_length", "0"], "time_context_length must be >= 1"),
    ]
    for argv, message in cases:
        with pytest.raises(ArgumentError, match=message):
            parse_arguments(argv, STAGES)
    with pytest.raises(ArgumentError, match="model_overrides is not valid JSON"):
        parse_arguments(["--dataset_path", "x", "--model_overrides", "{hidden: 3"], STAGES).model.overrides()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")
                                          if not p.name.endswith("_mapping.yaml")))  # data.prepare's mapping files
def test_every_shipped_recipe_parses(recipe: str, tmp_path: Path) -> None:
    """A recipe naming an argument its stage does not have (or a bad value) would stop a user's run at start."""
    from training.stages import STAGES

    path = Path(__file__).resolve().parents[1] / "recipes" / recipe
    if recipe.startswith("env_"):  # scripts/env_demo.py's recipes: one section per stage, each a train.py recipe
        sys.path.insert(0, str(path.parents[1] / "scripts"))
        from env_demo import STAGES as PIPELINE_STAGES, load_recipe, write_stage_recipes

        stage_files = write_stage_recipes(load_recipe(str(path))[0], tmp_path)
        assert sorted(stage_files) == sorted(PIPELINE_STAGES)
        for stage, stage_file in stage_files.items():
            args = parse_arguments(["--config", str(stage_file), "--dataset_path", "prepared"], STAGES)
            assert args.training.stage == stage
        return
    args = parse_arguments(["--config", str(path)], STAGES)
    assert args.training.stage in STAGES and args.data.dataset_path


# ---- weight averaging (weight_average_start) ----

def test_weight_average_is_the_mean_of_the_weights_from_its_start_step(tmp_path: Path) -> None:
    from training.weight_average import WeightAverage

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)  # frozen: left out of the average and never overwritten
    frozen = model[1].bias.detach().clone()
    average = WeightAverage(model, start_step=2)
    for step, value in enumerate([1.0, 4.0, 2.5, -0.5], start=1):
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.fill_(value)
        average.update(step)
    expected = (4.0 + 2.5 - 0.5) / 3  # steps 2, 3 and 4
    assert average.count == 3
    with average.swapped_in():
        assert torch.allclose(model[0].weight, torch.full((2, 2), expected))
        assert torch.equal(model[1].bias, frozen)
    assert torch.all(model[0].weight == -0.5)  # the live weights are back, exactly

    average.save_file(tmp_path / "average.safetensors")
    restored = WeightAverage(model, start_step=2)
    restored.load_file(tmp_path / "average.safetensors")
    assert restored.count == 3
    assert all(torch.equal(restored.average[k], average.average[k]) for k in average.average)
    restored.copy_to_model()
    assert torch.allclose(model[0].bias, torch.full((2,), expected))

    other = WeightAverage(nn.Linear(3, 1), start_step=1)
    with pytest.raises(ValueError, match="trainable parameters"):
        other.load_file(tmp_path / "average.safetensors")


def test_an_empty_weight_average_leaves_the_model_alone() -> None:
    from training.weight_average import WeightAverage

    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    average = WeightAverage(model, start_step=5)
    average.update(4)  # before the start: not counted
    with average.swapped_in():
        assert torch.equal(model.weight, before)
    average.copy_to_model()
    assert torch.equal(model.weight, before) and average.count == 0


def test_each_clip_group_is_clipped_alone() -> None:
    """A head with a huge gradient is clipped to max_norm; the other head's small gradient is left as it was."""
    from training.loop import LogWindow, clip_gradients, clip_groups

    model = nn.ModuleDict({"policy_head": nn.Linear(3, 2), "value_head": nn.Linear(3, 2), "frozen": nn.Linear(3, 2)})
    model["frozen"].requires_grad_(False)
    for name, scale in (("policy_head", 100.0), ("value_head", 0.01)):
        for param in model[name].parameters():
            param.grad = torch.full_like(param, scale)
    small = [p.grad.clone() for p in model["value_head"].parameters()]
    groups = clip_groups(model, {"policy": ("policy_head.",), "value": ("value_head.",)})

    class Accelerator:  # what the loop calls
        clip_grad_norm_ = staticmethod(torch.nn.utils.clip_grad_norm_)

    window = LogWindow()
    total = clip_gradients(Accelerator(), groups, 1.0, window)
    policy_norm = torch.cat([p.grad.flatten() for p in model["policy_head"].parameters()]).norm()
    assert float(policy_norm) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(model["value_head"].parameters(), small))
    logged = window.flush()
    assert logged["grad_norm/policy"] == pytest.approx(100.0 * math.sqrt(8), rel=1e-5)
    assert logged["grad_norm/value"] == pytest.approx(0.01 * math.sqrt(8), rel=1e-5)
    assert float(total) == pytest.approx(math.hypot(logged["grad_norm/policy"], logged["grad_norm/value"]), rel=1e-5)
    assert len(clip_groups(model, {})["all"]) == 4  # the trainable parameters only
    with pytest.raises(Exception, match="match no trainable parameter"):
        clip_groups(model, {"agent": ("agent_tokens.",)})


@pytest.mark.parametrize("configured,requested,window,expected", [
    (192, None, 16, 8), (None, None, 16, 8), (4, None, 16, 4), (192, None, 1, 1), (192, 16, 16, 16), (192, 3, 16, 3),
])
def test_the_time_context_is_below_the_window_unless_asked(configured, requested, window, expected) -> None:
    from training.stages.dynamics import choose_time_context

    assert choose_time_context(configured, requested, window) == expected


def test_a_time_context_longer_than_the_window_is_refused() -> None:
    from training.stages.dynamics import choose_time_context

    with pytest.raises(Exception, match="time_context_length 17 is longer than window_length 16"):
        choose_time_context(192, 17, 16)


def test_the_loop_is_made_of_small_functions() -> None:
    """training/loop.py reads top to bottom in pieces: no function (or method) is longer than 60 lines."""
    import ast

    source = (Path(__file__).resolve().parents[1] / "training" / "loop.py").read_text()
    long = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60}
    assert not long, long


def test_removed_arguments_are_named_in_recipes_and_refused_in_checkpoints(tmp_path: Path) -> None:
    from modeling_dreamer.errors import ArgumentError, RunError
    from training.checkpointing import TrainerState, check_resume
    from training.stages import STAGES

    with pytest.raises(ArgumentError, match="no longer has: --relevant_balance .drawing gain and penalty"):
        parse_arguments(["--dataset_path", "x", "--relevant_balance", "sign"], STAGES)
    arguments = parse_arguments(["--dataset_path", "x"], STAGES).as_dict()
    off = TrainerState(stage="agent", arguments={**arguments, "relevant_balance": "none"})
    check_resume(off, tmp_path, "agent", arguments)  # the removed option was off: the run is what it was
    on = TrainerState(stage="agent", arguments={**arguments, "relevant_balance": "sign"})
    with pytest.raises(RunError, match="no longer has .*relevant_balance"):
        check_resume(on, tmp_path, "agent", arguments)
