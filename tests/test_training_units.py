"""Unit tests of the training helpers: optimiser groups, schedules, mixed precision, checkpoints, metrics,
and recipe parsing. Each expectation is computed independently of the code under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.arguments import parse_arguments, recipe_to_argv
from training.checkpointing import (
    TrainerState,
    finalize_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resolve_checkpoint,
    temporary_checkpoint_dir,
)
from training.metrics import majority_rate, masked_mean, roc_auc
from training.optim import (
    GroupScales,
    build_param_groups,
    choose_mixed_precision,
    lr_multiplier,
)


# ---- mixed precision by device (code review item 12) ----

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


# ---- parameter groups (code review item 13) ----

class TinyAgent(nn.Module):
    """Mimics DreamerAgentModel's top-level layout: a backbone, agent tokens, heads."""

    def __init__(self) -> None:
        super().__init__()
        self.dreamer = nn.ModuleDict({"proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "embed": nn.Embedding(3, 4)})
        self.agent_tokens = nn.Parameter(torch.zeros(1, 4))
        self.agent_task_embed = nn.Embedding(2, 4)
        self.reward_head = nn.Linear(4, 5)
        self.policy_head = nn.Linear(4, 3)
        self.value_head = nn.Linear(4, 5)

    module_roles = {"agent_tokens": "agent", "agent_task_embed": "agent", "reward_head": "heads",
                    "policy_head": "heads", "value_head": "heads"}

    def parameter_role(self, name: str) -> str:
        return self.module_roles.get(name.split(".", 1)[0], "backbone")


def test_param_groups_carry_scaled_lrs_and_decay_rules() -> None:
    model = TinyAgent()
    model.value_head.requires_grad_(False)
    groups = build_param_groups(model, 1e-3, 0.1, GroupScales(backbone=0.1, agent=2.0, heads=0.5))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "agent_no_decay", "heads", "heads_no_decay"}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(by_name["backbone"]["params"]) == {id(model.dreamer["proj"].weight)}
    assert ids(by_name["backbone_no_decay"]["params"]) == ids(
        [model.dreamer["proj"].bias, model.dreamer["norm"].weight, model.dreamer["norm"].bias, model.dreamer["embed"].weight])
    assert ids(by_name["agent_no_decay"]["params"]) == ids([model.agent_tokens, model.agent_task_embed.weight])
    assert ids(by_name["heads"]["params"]) == ids([model.reward_head.weight, model.policy_head.weight])
    assert math.isclose(by_name["backbone"]["lr"], 1e-4)
    assert math.isclose(by_name["agent_no_decay"]["lr"], 2e-3)
    assert math.isclose(by_name["heads"]["lr"], 5e-4)
    assert by_name["backbone"]["weight_decay"] == 0.1 and by_name["heads_no_decay"]["weight_decay"] == 0.0
    # Frozen parameters are in no group; every trainable parameter is in exactly one.
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_param_groups_survive_adamw() -> None:
    model = TinyAgent()
    groups = build_param_groups(model, 1e-3, 0.1, GroupScales(backbone=0.1))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["backbone"] == pytest.approx(1e-4)


def test_parameter_roles() -> None:
    from modeling_dreamer import DreamerAgentModel

    assert DreamerAgentModel.parameter_role("dreamer.layers.0.attn.q_proj.weight") == "backbone"
    assert DreamerAgentModel.parameter_role("agent_tokens.slots") == "agent"
    assert DreamerAgentModel.parameter_role("reward_head.out.weight") == "heads"


# ---- learning-rate schedule ----

def test_warmup_then_cosine() -> None:
    assert lr_multiplier(0, "cosine", 4, 104) == pytest.approx(0.25)
    assert lr_multiplier(3, "cosine", 4, 104) == pytest.approx(1.0)
    assert lr_multiplier(4, "cosine", 4, 104) == pytest.approx(1.0)
    assert lr_multiplier(54, "cosine", 4, 104) == pytest.approx(0.5)  # half-way through the decay
    assert lr_multiplier(104, "cosine", 4, 104) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(50, "constant", 4, 104) == 1.0
    assert lr_multiplier(54, "linear", 4, 104) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        lr_multiplier(10, "polynomial", 0, 10)


# ---- checkpoints ----

def test_checkpoint_listing_resolution_and_pruning(tmp_path: Path) -> None:
    for step in (5, 20, 10):
        tmp, final = temporary_checkpoint_dir(tmp_path, step)
        tmp.mkdir()
        TrainerState(global_step=step).save(tmp)
        finalize_checkpoint(tmp, final)
    (tmp_path / "checkpoint-30.tmp").mkdir()  # an interrupted write is never picked
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10", "checkpoint-20"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-20"
    assert TrainerState.load(resolve_checkpoint(tmp_path, "latest")).global_step == 20
    assert resolve_checkpoint(tmp_path, None) is None
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["checkpoint-5"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-30.tmp"))


def test_latest_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert resolve_checkpoint(tmp_path / "missing", "latest") is None


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


# ---- recipes ----

def test_recipe_then_command_line_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset_path: /data/x\nstage: agent\nlearning_rate: 0.001\nbc_loss_sources: [uniform, relevant]\n"
        "model_overrides: {hidden_size: 64}\nfreeze_backbone: true\n"
    )
    model_args, data_args, train_args = parse_arguments(["--config", str(recipe), "--learning_rate", "0.01"])
    assert data_args.dataset_path == "/data/x"
    assert train_args.learning_rate == 0.01  # the command line wins
    assert train_args.bc_loss_sources == ["uniform", "relevant"]
    assert model_args.overrides() == {"hidden_size": 64}
    assert model_args.freeze_backbone is True
    assert recipe_to_argv({"a": [1, 2], "b": None, "c": {"x": 1}}) == ["--a", "1", "2", "--c", json.dumps({"x": 1})]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bc_loss_sources: unknown draw source .everything."):
        parse_arguments(["--dataset_path", "x", "--bc_loss_sources", "everything"])
    with pytest.raises(ValueError, match="stage"):
        parse_arguments(["--dataset_path", "x", "--stage", "imagination"])
    with pytest.raises(SystemExit, match="no such file"):
        parse_arguments(["--config", str(tmp_path / "missing.yaml")])
