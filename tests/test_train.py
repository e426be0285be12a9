"""End-to-end tests of train.py on a small generated game: both stages, checkpoints, exact resume, the
non-finite guard, a frozen backbone, loss routing and the independent-frames ratio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train
from training.arguments import DataArguments, DreamerTrainingArguments

TINY_MODEL = json.dumps({
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
    "time_every": 2, "num_register_tokens": 2, "k_max": 4, "mtp_length": 3, "num_bins": 17,
    "head_hidden_size": 32, "head_layers": 1,
})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic game (6 videos x 120 frames), prepared into a DatasetDict."""
    from data import prepare, synthetic

    root = tmp_path_factory.mktemp("game")
    assert synthetic.main(["--output", str(root / "raw"), "--num-videos", "6", "--frames", "120", "--seed", "3"]) == 0
    assert prepare.main([
        "--latents-dir", str(root / "raw" / "latents"), "--features-dir", str(root / "raw" / "features"),
        "--output", str(root / "prepared"), "--no-progress", "--validation-fraction", "0.2",
    ]) == 0
    return root / "prepared"


def run_train(prepared: Path, output: Path, *extra: str) -> dict[str, float]:
    argv = [
        "--dataset_path", str(prepared), "--output_dir", str(output), "--model_overrides", TINY_MODEL,
        "--window_length", "8", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--report_to", "none", "--logging_steps", "1", "--max_eval_windows", "8", "--learning_rate", "0.003",
        "--warmup_steps", "1", "--seed", "11", *extra,
    ]
    return train.main(argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_records(path: Path) -> dict[int, dict]:
    """Per-step training records, without wall-clock fields."""
    return {
        r["step"]: {k: v for k, v in r.items() if k != "elapsed_s"}
        for r in read_jsonl(path) if "skipped_steps" in r
    }


@pytest.fixture(scope="module")
def dynamics_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dynamics")
    run_train(prepared, out, "--stage", "dynamics", "--max_steps", "3", "--save_steps", "2",
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
    assert setup["setup"] and setup["world_size"] == 1 and setup["mixed_precision"] == "no"
    assert setup["global_batch_size"] == 4


def test_agent_stage_from_backbone_and_reload(prepared: Path, dynamics_run: Path, tmp_path: Path) -> None:
    from modeling_dreamer import DreamerAgentModel

    metrics = run_train(prepared, tmp_path, "--stage", "agent", "--init_from", str(dynamics_run / "final"),
                        "--max_steps", "2", "--save_steps", "1", "--bc_loss_sources", "uniform", "relevant")
    assert (tmp_path / "checkpoint-1" / "rms_state.safetensors").is_file()
    rms = load_file(str(tmp_path / "checkpoint-2" / "rms_state.safetensors"))
    assert set(rms) == {f"{t}.{b}" for t in ("dynamics", "reward", "bc") for b in ("ema_sq", "steps")}
    model = DreamerAgentModel.from_pretrained(tmp_path / "final")
    assert model.config.architectures == ["DreamerAgentModel"]
    assert (tmp_path / "final" / "README.md").read_text().startswith("---")
    for key in ("eval/reward_auc", "eval/bc_top1/movement", "eval/twohot_clamped_share", "eval/dynamics_loss",
                "eval/reward_mae/offset_3", "eval/bc_top1/movement/offset_3", "eval/bc_majority/movement"):
        assert key in metrics, key
    setup = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert setup["origin"]["init"] == "grown from backbone"
    # Per-group learning rates as configured: backbone 0.3 x, agent and heads 1 x the base rate.
    assert setup["learning_rates"]["backbone"] == pytest.approx(0.003 * 0.3)
    assert setup["learning_rates"]["heads"] == pytest.approx(0.003)
    assert setup["learning_rates"]["agent_no_decay"] == pytest.approx(0.003)


def test_resume_continues_bitwise(prepared: Path, tmp_path: Path) -> None:
    """4 steps straight == 2 steps, then resume from checkpoint-2 for 2 more (losses, weights, RMS state)."""
    common = ("--stage", "agent", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "0",
              "--gradient_accumulation_steps", "2")
    straight = tmp_path / "straight"
    run_train(prepared, straight, *common)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    state = json.loads((resumed / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["batches_in_epoch"] > 0  # the resume point is inside an epoch
    run_train(prepared, resumed, *common, "--resume_from_checkpoint", "latest")

    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rms_a = load_file(str(straight / "checkpoint-4" / "rms_state.safetensors"))
    rms_b = load_file(str(resumed / "checkpoint-4" / "rms_state.safetensors"))
    assert all(torch.equal(rms_a[k], rms_b[k]) for k in rms_a)
    steps_a, steps_b = step_records(straight / "metrics.jsonl"), step_records(resumed / "metrics.jsonl")
    assert steps_a[3] == steps_b[3] and steps_a[4] == steps_b[4]
    # And the run really learned something different from its start (the test can fail).
    start = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)


def test_nonfinite_step_is_skipped_and_counted(prepared: Path, tmp_path: Path) -> None:
    run_train(prepared, tmp_path, "--stage", "agent", "--max_steps", "3", "--save_steps", "1",
              "--debug_nan_at_step", "1", "--eval_steps", "0")
    before, after = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    for file in ("model.safetensors", "rms_state.safetensors"):
        x, y = load_file(str(before / file)), load_file(str(after / file))
        assert all(torch.equal(x[k], y[k]) for k in x), file
    opt_before = torch.load(before / "optimizer.bin", weights_only=False)["state"]
    opt_after = torch.load(after / "optimizer.bin", weights_only=False)["state"]
    assert all(torch.equal(opt_before[i]["exp_avg"], opt_after[i]["exp_avg"]) for i in opt_before)
    records = {r["step"]: r for r in read_jsonl(tmp_path / "metrics.jsonl") if "skipped_steps" in r}
    assert records[1]["skipped_steps"] == 0 and records[2]["skipped_steps"] == 1 and records[3]["skipped_steps"] == 1
    # Step 3 trains again.
    z = load_file(str((tmp_path / "checkpoint-3") / "model.safetensors"))
    y = load_file(str(after / "model.safetensors"))
    assert any(not torch.equal(z[k], y[k]) for k in z)


def test_frozen_backbone_is_bitwise_unchanged(prepared: Path, dynamics_run: Path, tmp_path: Path) -> None:
    run_train(prepared, tmp_path, "--stage", "agent", "--init_from", str(dynamics_run / "final"),
              "--freeze_backbone", "true", "--max_steps", "2", "--save_steps", "0", "--eval_steps", "0")
    backbone = load_file(str(dynamics_run / "final" / "model.safetensors"))
    agent = load_file(str(tmp_path / "final" / "model.safetensors"))
    for name, tensor in backbone.items():
        assert torch.equal(agent[f"dreamer.{name}"], tensor), name
    setup = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert not any(g.startswith("backbone") for g in setup["learning_rates"])
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "step" in r and "loss/bc" in r]
    assert records and all("loss/dynamics" not in r for r in records)  # no dynamics gradient is computed


# ---- compute_losses with a small real model: routing and the independent-frames ratio ----

def small_agent_and_batch(batch_size: int, frames: int) -> tuple[torch.nn.Module, dict]:
    from modeling_dreamer import DreamerAgentModel, DreamerConfig

    config = DreamerConfig.from_preset("tiny", latent_channels=2, latent_height=2, latent_width=2,
                                       **json.loads(TINY_MODEL))
    torch.manual_seed(0)
    model = DreamerAgentModel(config)
    batch = {
        "latents": torch.randn(batch_size, frames, 2, 2, 2).half(),
        "reward": torch.zeros(batch_size, frames),
        "has_action": torch.ones(batch_size, frames, dtype=torch.bool),
        "source": torch.tensor([0, 1] * (batch_size // 2)),
    }
    for name, spec in config.action_space.items():
        batch[name] = (torch.randint(0, spec["n"], (batch_size, frames)) if spec["type"] == "categorical"
                       else torch.rand(batch_size, frames) < 0.5)
    return model, batch


def test_loss_routing_by_draw_source() -> None:
    model, batch = small_agent_and_batch(2, 5)
    batch["has_action"][1, 2] = False  # one unlabeled action in the relevant example
    args = DreamerTrainingArguments(bc_loss_sources=["relevant"], reward_loss_sources=["uniform"],
                                    dynamics_loss_sources=["uniform"])
    losses, counts, _ = train.compute_losses(
        model, model, batch, stage="agent", args=args, data_args=DataArguments(), config=model.config,
        bins=model.reward_bins(), generator=torch.Generator().manual_seed(0), train_dynamics=True)
    horizon = model.config.mtp_length
    # Targets (t, n) with t + n < 5 in one example: sum over n of (5 - n).
    per_example = sum(5 - n for n in range(horizon + 1))
    assert int(counts["reward"]) == per_example  # the uniform example only
    # BC on the relevant example, minus the targets that point at its unlabeled frame 2 (one per offset n <= 2).
    assert int(counts["bc"]) == per_example - (min(horizon, 2) + 1)
    assert int(counts["dynamics"]) == 5  # frames of the uniform example
    assert set(losses) == {"dynamics", "reward", "bc"}


def test_independent_frames_share_matches_ratio() -> None:
    """The share of examples run in independent-frame mode is the configured ratio (code review item 11)."""
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self, record: bool) -> None:
            super().__init__()
            self.record = record

        def forward(self, latents, signal_level, step_size=None, **kwargs):  # noqa: ANN001
            if self.record:
                seen.append(kwargs["independent_frames"].clone())
            return type("Out", (), {"latent_pred": latents.float()})()

    batch = {"latents": torch.zeros(8, 3, 1, 1, 1), "has_action": torch.ones(8, 3, dtype=torch.bool),
             "source": torch.zeros(8, dtype=torch.long), "movement": torch.zeros(8, 3, dtype=torch.long)}
    config = type("C", (), {"k_max": 4, "action_space": {"movement": {"type": "categorical", "n": 18}}})()
    args = DreamerTrainingArguments(stage="dynamics")
    for step in range(250):
        train.compute_losses(Spy(record=True), Spy(record=False), batch, stage="dynamics", args=args,
                             data_args=DataArguments(independent_frames_ratio=0.3), config=config, bins=None,
                             generator=train.step_generator(0, step, 0, 0), train_dynamics=True)
    flags = torch.stack(seen).float()
    share = float(flags.mean())
    assert flags.shape == (250, 8)
    assert abs(share - 0.3) < 0.03, share  # 2000 Bernoulli(0.3) draws: std 0.01


def test_world_size_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        train.check_world_size(1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    train.check_world_size(1)
