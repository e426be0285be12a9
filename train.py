#!/usr/bin/env python
"""Train a Dreamer world model (stage `dynamics`, DreamerV4 phase 1) or finetune it into an agent
(stage `agent`, phase 2) with Accelerate.

    accelerate launch [--config_file accelerate_configs/cpu.yaml] train.py --config recipes/demo_agent.yaml \
        [--key value ...]
    python train.py --config recipes/demo_agent.yaml        # one device, no launcher needed

The loop reads top to bottom: arguments -> Accelerator -> data -> model -> optimiser -> (resume) ->
for each step: losses, loss normalisation, backward, clip, step; logging, evaluation, checkpoints ->
final model. Each loss term is one function in `modeling_dreamer.objectives`; see docs/training.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.sampler import DrawSource
from training.arguments import DataArguments, DreamerTrainingArguments, ModelArguments, parse_arguments
from training.checkpointing import (
    RMS_STATE_FILE,
    TrainerState,
    finalize_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    temporary_checkpoint_dir,
)
from training.metrics import majority_rate, masked_mean, roc_auc
from training.optim import GroupScales, build_param_groups, build_scheduler, choose_mixed_precision

LOSS_TERMS = {"dynamics": ("dynamics",), "agent": ("dynamics", "reward", "bc")}


# --------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------


def check_world_size(num_processes: int) -> None:
    """Fail loudly when the launcher started processes that do not form one job.

    `accelerate launch --multi_gpu` on a machine without GPUs starts independent processes that each train
    alone (see docs/training.md); the environment's WORLD_SIZE then disagrees with Accelerate's view.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes != launched:
        raise RuntimeError(
            f"Accelerate sees {num_processes} process(es) but the launcher started WORLD_SIZE={launched}. "
            "For CPU DDP use: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ..."
        )


def schema_config_fields(schema: Any, model_args: ModelArguments) -> dict[str, Any]:
    """DreamerConfig fields that the dataset determines (latent shape, action space, twohot range)."""
    channels, height, width = schema.latent_shape
    low, high = schema.recommended_twohot_range
    return {
        "latent_channels": int(channels),
        "latent_height": int(height),
        "latent_width": int(width),
        "action_space": dict(schema.action_space),
        "bins_low": float(model_args.bins_low if model_args.bins_low is not None else low),
        "bins_high": float(model_args.bins_high if model_args.bins_high is not None else high),
    }


def build_model(model_args: ModelArguments, stage: str, schema: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to train and a description of where it came from (for the model card and metrics)."""
    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel

    data_fields = schema_config_fields(schema, model_args)
    overrides = model_args.overrides()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation

    if model_args.init_from is None:
        config = DreamerConfig.from_preset(model_args.preset, **{**data_fields, **overrides})
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        model = (DreamerModel if stage == "dynamics" else DreamerAgentModel)(config)
        origin = {"init": "scratch", "preset": model_args.preset}
    else:
        source = DreamerConfig.from_pretrained(model_args.init_from)
        for name in ("latent_channels", "latent_height", "latent_width"):
            if getattr(source, name) != data_fields[name]:
                raise ValueError(
                    f"--init_from {model_args.init_from}: {name}={getattr(source, name)} but the dataset has "
                    f"{data_fields[name]}; the checkpoint was trained on other latents"
                )
        if dict(source.action_space) != data_fields["action_space"]:
            raise ValueError(
                f"--init_from {model_args.init_from}: its action space {source.action_space} differs from the "
                f"dataset's {data_fields['action_space']}"
            )
        is_agent_checkpoint = "DreamerAgentModel" in (source.architectures or [])
        if stage == "dynamics":
            model = DreamerModel.from_pretrained(model_args.init_from, **kwargs)
            origin = {"init": "pretrained", "init_from": model_args.init_from}
        elif is_agent_checkpoint:
            model = DreamerAgentModel.from_pretrained(model_args.init_from, **kwargs)
            origin = {"init": "pretrained agent", "init_from": model_args.init_from}
        else:
            # Grow the phase-1 backbone: the twohot range comes from the dataset, the rest from the checkpoint.
            model = DreamerAgentModel.from_backbone(
                model_args.init_from,
                bins_low=data_fields["bins_low"],
                bins_high=data_fields["bins_high"],
                **overrides,
                **kwargs,
            )
            origin = {"init": "grown from backbone", "init_from": model_args.init_from}
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, origin


def freeze_for_stage(model: torch.nn.Module, stage: str, freeze_backbone: bool) -> None:
    """Phase 2 does not train the value head (that is phase 3); optionally freeze the dynamics backbone."""
    if stage != "agent":
        return
    for name, param in model.named_parameters():
        if name.startswith("value_head"):
            param.requires_grad_(False)
        elif freeze_backbone and model.parameter_role(name) == "backbone":
            param.requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# One training step's losses
# --------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """Randomness of one micro-batch as a pure function of (seed, step, micro-batch, rank).

    Noise levels, noise and independent-frame flags then do not depend on RNG state, which makes resumed runs
    bitwise identical to uninterrupted ones.
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank)


def routed(source: torch.Tensor, sources: list[str], frames: int) -> torch.Tensor:
    """(B, T) bool: frames of the examples whose draw source is in `sources`."""
    allowed = torch.tensor([DrawSource.parse(s) for s in sources], device=source.device, dtype=source.dtype)
    return torch.isin(source, allowed)[:, None].expand(-1, frames)


def compute_losses(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    batch: dict[str, Any],
    *,
    stage: str,
    args: DreamerTrainingArguments,
    data_args: DataArguments,
    config: Any,
    bins: torch.Tensor | None,
    generator: torch.Generator,
    train_dynamics: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """Raw loss terms of one micro-batch.

    Returns (losses, counts, logs): each loss is a scalar fp32 tensor with gradient, `counts[name]` the number
    of targets it averaged (0: the term had nothing to learn from in this micro-batch), and logs are floats.
    """
    from modeling_dreamer.objectives import (
        add_noise,
        bootstrap_target,
        mtp_policy_loss,
        mtp_reward_loss,
        sample_signal_and_step,
        shortcut_forcing_loss,
    )

    z_clean = batch["latents"].float()
    batch_size, frames = z_clean.shape[:2]
    device = z_clean.device
    d_min = 1.0 / config.k_max
    tau, step_size = sample_signal_and_step(batch_size, frames, config.k_max, generator=generator)
    noise = torch.randn(z_clean.shape, generator=generator)
    independent = torch.rand(batch_size, generator=generator) < data_args.independent_frames_ratio
    tau, step_size, noise, independent = tau.to(device), step_size.to(device), noise.to(device), independent.to(device)
    if stage == "agent":
        # Examples that do not train the dynamics need no shortcut-grid noise: the agent observes them as it
        # observes frames at inference, slightly corrupted (context_signal_level) at the finest step.
        dynamics_examples = routed(batch["source"], args.dynamics_loss_sources, frames)
        if not train_dynamics:
            dynamics_examples = torch.zeros_like(dynamics_examples)
        tau = torch.where(dynamics_examples, tau, torch.full_like(tau, args.context_signal_level))
        step_size = torch.where(dynamics_examples, step_size, torch.full_like(step_size, d_min))
    z_tilde = add_noise(z_clean, tau, noise)
    actions = {name: batch[name] for name in config.action_space}
    action_mask = batch["has_action"]
    inputs = dict(actions=actions, action_mask=action_mask, independent_frames=independent)

    out = model(z_tilde, tau, step_size, **inputs)
    losses: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    logs: dict[str, float] = {"independent_share": float(independent.float().mean())}

    if train_dynamics:
        dyn_mask = routed(batch["source"], args.dynamics_loss_sources, frames)

        # The two teacher passes of the bootstrap target run only on the examples that need them.
        rows = ((step_size > d_min) & dyn_mask).any(dim=1)
        bootstrap = torch.zeros_like(z_clean)
        if bool(rows.any()):
            sub_inputs = dict(
                actions={name: value[rows] for name, value in actions.items()},
                action_mask=action_mask[rows],
                independent_frames=independent[rows],
            )

            def predict(z: torch.Tensor, level: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
                return teacher(z, level, step, **sub_inputs).latent_pred.float()

            bootstrap[rows] = bootstrap_target(predict, z_tilde[rows], tau[rows], step_size[rows], d_min)
        shortcut = shortcut_forcing_loss(
            out.latent_pred.float(), z_clean, z_tilde, tau, step_size, d_min, bootstrap, dyn_mask
        )
        losses["dynamics"] = shortcut.loss
        counts["dynamics"] = dyn_mask.sum()
        logs["dynamics_flow"] = float(shortcut.flow_loss.detach())
        logs["dynamics_bootstrap"] = float(shortcut.bootstrap_loss.detach())

    if stage == "agent":
        reward_valid = routed(batch["source"], args.reward_loss_sources, frames)
        reward = mtp_reward_loss(out.reward_logits.float(), batch["reward"].float(), reward_valid, bins.to(device))
        bc_valid = action_mask & routed(batch["source"], args.bc_loss_sources, frames)
        policy = mtp_policy_loss(
            {k: v.float() for k, v in out.policy_logits.items()}, actions, bc_valid, config.action_space
        )
        # With no valid target the MTP losses are an exact 0 still connected to every head's logits, so DDP
        # sees a gradient for every trainable head in every step.
        losses["reward"] = reward.loss
        losses["bc"] = policy.loss
        counts["reward"] = reward.per_offset_count.sum()
        counts["bc"] = policy.per_offset_count.sum()
        logs["twohot_clamped"] = float(reward.num_clamped)
        for n, value in enumerate(reward.per_offset_loss.tolist()):
            logs[f"reward_loss/offset_{n}"] = value
        for n, value in enumerate(policy.per_offset_loss.tolist()):
            logs[f"bc_loss/offset_{n}"] = value
    return losses, counts, logs


def normalize_losses(
    normalizer: Any, losses: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the RMS-normalised loss terms.

    A term with no valid target on this process (count 0) still joins the normaliser's cross-process
    reduction but is left out of its average; a term that no process had leaves its normaliser untouched.
    """
    total = torch.zeros((), device=next(iter(losses.values())).device)
    logs: dict[str, float] = {}
    for name, loss in losses.items():
        present = bool(counts[name] > 0)
        normalized = normalizer.normalize(name, loss, present=present)  # an absent term is an exact 0
        total = total + normalized
        if present:
            logs[f"loss/{name}"] = float(loss.detach())
            logs[f"loss_normalized/{name}"] = float(normalized.detach())
        logs[f"rms/{name}"] = float(normalizer[name].rms())
    return total, logs


def all_finite(losses: dict[str, torch.Tensor], accelerator: Any) -> bool:
    """True when every loss term is finite on every process (so all processes skip a bad step together)."""
    bad = torch.tensor(float(not all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())),
                       device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return float(bad) == 0.0


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Any,
    accelerator: Any,
    *,
    stage: str,
    config: Any,
    bins: torch.Tensor | None,
    context_signal_level: float,
    seed: int,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Held-out metrics and the gathered predictions behind them.

    Dynamics: one-step x-prediction loss at d_min with per-frame signal levels from a fixed generator.
    Agent heads: observed frames at `context_signal_level` (slightly noisy, as the agent sees context at
    inference), reward decoded per MTP offset (MAE, AUC of nonzero-reward events), BC top-1 per component and
    offset, the share of twohot targets clamped.
    """
    from modeling_dreamer.objectives import (
        add_noise,
        mtp_targets,
        shortcut_forcing_loss,
        symlog,
        twohot_decode,
    )

    model.eval()
    d_min = 1.0 / config.k_max
    generator = torch.Generator().manual_seed(seed + 7_777)
    dyn_sum, dyn_frames = 0.0, 0
    gathered: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        z_clean = batch["latents"].float()
        batch_size, frames = z_clean.shape[:2]
        device = z_clean.device
        actions = {name: batch[name] for name in config.action_space}
        inputs = dict(actions=actions, action_mask=batch["has_action"])
        # The dynamics loss at the finest step (flow term), at signal levels uniform on the grid.
        tau = (torch.floor(torch.rand(batch_size, frames, generator=generator) * config.k_max) / config.k_max)
        step = torch.full_like(tau, d_min)
        noise = torch.randn(z_clean.shape, generator=generator)
        tau, step, noise = tau.to(device), step.to(device), noise.to(device)
        z_tilde = add_noise(z_clean, tau, noise)
        out = model(z_tilde, tau, step, **inputs)
        ones = torch.ones(batch_size, frames, dtype=torch.bool, device=device)
        dyn = shortcut_forcing_loss(out.latent_pred.float(), z_clean, z_tilde, tau, step, d_min, torch.zeros_like(z_clean), ones)
        per_example = torch.full((batch_size,), float(dyn.loss), device=device)
        record: dict[str, torch.Tensor] = {"dynamics_loss": per_example}
        if stage == "agent":
            level = torch.full((batch_size, frames), context_signal_level, device=device)
            noise = torch.randn(z_clean.shape, generator=generator).to(device)
            observed = add_noise(z_clean, level, noise)
            out = model(observed, level, step, **inputs)
            horizon = config.mtp_length
            reward_target, reward_mask = mtp_targets(batch["reward"].float(), ones, horizon)
            record["reward_pred"] = twohot_decode(out.reward_logits.float(), bins.to(device))
            record["reward_true"] = reward_target
            record["reward_mask"] = reward_mask
            record["reward_clamped"] = (
                (symlog(reward_target) < bins[0].item()) | (symlog(reward_target) > bins[-1].item())
            ) & reward_mask
            for name, spec in config.action_space.items():
                logits = out.policy_logits[name].float()
                if spec["type"] == "categorical":
                    predicted = logits.argmax(-1)
                else:
                    predicted = (logits[..., 0] > 0).long()
                target, mask = mtp_targets(batch[name].long(), batch["has_action"], horizon)
                record[f"action_pred/{name}"] = predicted
                record[f"action_true/{name}"] = target
                record[f"action_mask/{name}"] = mask
        # gloo cannot gather bool tensors: masks travel as uint8.
        record = {k: v.to(torch.uint8) if v.dtype == torch.bool else v for k, v in record.items()}
        record = accelerator.gather_for_metrics(record)
        for key, value in record.items():
            gathered.setdefault(key, []).append(value.cpu().numpy())
    model.train()
    arrays = {key: np.concatenate(values) for key, values in gathered.items()}
    metrics: dict[str, float] = {}
    if "dynamics_loss" in arrays:
        metrics["eval/dynamics_loss"] = float(arrays["dynamics_loss"].mean())
    if stage == "agent" and "reward_pred" in arrays:
        pred, true, mask = arrays["reward_pred"], arrays["reward_true"], arrays["reward_mask"].astype(bool)
        for n in range(pred.shape[-1]):
            m = mask[..., n]
            metrics[f"eval/reward_mae/offset_{n}"] = masked_mean(np.abs(pred[..., n] - true[..., n]), m)
            metrics[f"eval/reward_auc/offset_{n}"] = roc_auc(np.abs(pred[..., n])[m], (true[..., n] != 0)[m])
        metrics["eval/reward_auc"] = metrics["eval/reward_auc/offset_0"]
        metrics["eval/reward_mae"] = metrics["eval/reward_mae/offset_0"]
        metrics["eval/twohot_clamped_share"] = float(arrays["reward_clamped"].sum() / max(1, mask.sum()))
        for name in config.action_space:
            pred_a, true_a = arrays[f"action_pred/{name}"], arrays[f"action_true/{name}"]
            mask_a = arrays[f"action_mask/{name}"].astype(bool)
            for n in range(pred_a.shape[-1]):
                metrics[f"eval/bc_top1/{name}/offset_{n}"] = masked_mean(pred_a[..., n] == true_a[..., n], mask_a[..., n])
            metrics[f"eval/bc_top1/{name}"] = metrics[f"eval/bc_top1/{name}/offset_0"]
            metrics[f"eval/bc_majority/{name}"] = majority_rate(true_a[..., 0], mask_a[..., 0])
    return metrics, arrays


# --------------------------------------------------------------------------------------------------
# Logging and the model card
# --------------------------------------------------------------------------------------------------


def dump_rank_state(
    output_dir: Path, rank: int, model: torch.nn.Module, normalizer: torch.nn.Module, windows: list[list[int]]
) -> None:
    """What one process holds at the end (testing aid): a checksum of its weights, its normaliser state and
    the (window, source) draws it trained on, in order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "rank": rank,
        "weights_sha256": digest.hexdigest(),
        "rms_state": {k: v.item() for k, v in normalizer.state_dict().items()},
        "windows": windows,
    }
    (output_dir / f"rank_state_{rank}.json").write_text(json.dumps(record))


class MetricsLog:
    """`OUTPUT/metrics.jsonl`: a setup line, then one JSON object per logged step (main process only)."""

    def __init__(self, path: Path, enabled: bool, append: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled and not append:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")


def write_model_card(folder: Path, config: Any, setup: dict[str, Any], metrics: dict[str, float], data_path: str) -> None:
    """A README.md in the Hub model-card format (YAML front matter, then the facts of this run)."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [dreamerv4, world-model, reinforcement-learning, modeling_dreamer]",
        "---",
        f"# {config.architectures[0] if config.architectures else 'Dreamer'} ({setup['stage']} stage)",
        "",
        "Trained with [modeling_dreamer](https://github.com) `train.py` (DreamerV4 "
        f"{'phase 1, dynamics pretraining' if setup['stage'] == 'dynamics' else 'phase 2, agent finetuning'}).",
        "",
        "## Load",
        "```python",
        "from modeling_dreamer import DreamerAgentModel, DreamerModel",
        f"model = {config.architectures[0] if config.architectures else 'DreamerModel'}.from_pretrained(\"<this folder>\")",
        "```",
        "",
        "## Data",
        f"- prepared dataset: `{data_path}`",
        f"- latents: ({config.latent_channels}, {config.latent_height}, {config.latent_width})",
        f"- action space: `{json.dumps(config.action_space)}`",
        f"- twohot: {config.num_bins} bins over [{config.bins_low:.3f}, {config.bins_high:.3f}] (symlog space)",
        "",
        "## Training",
        *[f"- {k}: {v}" for k, v in setup.items() if k not in ("parameters",)],
        f"- parameters: {json.dumps(setup.get('parameters', {}))}",
        "",
        "## Held-out metrics",
        *([f"| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
          if metrics else ["(no evaluation was run)"]),
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, args = parse_arguments(argv)

    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from data.sampler import MixtureSampler
    from data.schema import load_prepared
    from data.windows import WindowDataset, collate_windows
    from modeling_dreamer.objectives import LossNormalizer

    # ---- Accelerator: mixed precision chosen by device, one schedule step per optimiser step ----
    # Accelerate forms a CPU process group only when told in code that it runs on the CPU; without this a
    # 2-process CPU launch silently gives two independent single-process runs.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not (
        torch.cuda.is_available() or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    )
    device_type = PartialState(cpu=use_cpu).device.type
    mixed_precision = choose_mixed_precision(
        args.mixed_precision, device_type, device_type == "cuda" and torch.cuda.is_bf16_supported()
    )
    log_with = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=args.output_dir,
        step_scheduler_with_optimizer=False,
    )
    check_world_size(accelerator.num_processes)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    # ---- Data: windows of the prepared dataset, drawn by the reward-mixture sampler ----
    datasets, schema = load_prepared(data_args.dataset_path)
    train_windows = WindowDataset(datasets["train"], data_args.window_length, stride=data_args.window_stride)
    if len(train_windows) == 0:
        raise SystemExit(f"{data_args.dataset_path}: no training window of {data_args.window_length} consecutive frames")
    sampler = MixtureSampler(
        len(train_windows), train_windows.relevant_windows(), data_args.relevant_fraction, seed=args.seed
    )
    train_loader = DataLoader(
        train_windows,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collate_windows,
        drop_last=True,
        num_workers=data_args.dataloader_num_workers,
    )
    eval_loader = None
    if "validation" in datasets and len(datasets["validation"]) > 0:
        eval_windows = WindowDataset(datasets["validation"], data_args.window_length)
        if data_args.max_eval_windows is not None and len(eval_windows) > data_args.max_eval_windows:
            eval_windows = Subset(eval_windows, range(data_args.max_eval_windows))
        if len(eval_windows) > 0:
            eval_loader = DataLoader(
                eval_windows, batch_size=args.per_device_eval_batch_size, shuffle=False, collate_fn=collate_windows
            )

    # ---- Model, optimiser groups, schedule ----
    model, origin = build_model(model_args, args.stage, schema)
    freeze_for_stage(model, args.stage, model_args.freeze_backbone)
    config = model.config
    train_dynamics = not (args.stage == "agent" and model_args.freeze_backbone)
    bins = model.reward_bins().float() if args.stage == "agent" else None
    scales = GroupScales(
        backbone=args.backbone_lr_scale if args.stage == "agent" else 1.0,
        agent=args.agent_lr_scale,
        heads=args.head_lr_scale,
    )
    param_groups = build_param_groups(model, args.learning_rate, args.weight_decay, scales)
    optimizer = torch.optim.AdamW(
        param_groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    batches_per_epoch = math.ceil(len(sampler) / args.per_device_train_batch_size / accelerator.num_processes)
    steps_per_epoch = max(1, batches_per_epoch // args.gradient_accumulation_steps)
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, args.lr_scheduler_type, args.warmup_steps, total_steps)
    normalizer = LossNormalizer(LOSS_TERMS[args.stage], decay=args.rms_decay)

    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    normalizer.to(accelerator.device)
    teacher = accelerator.unwrap_model(model)

    # ---- Resume ----
    state = TrainerState(seed=args.seed, stage=args.stage)
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        normalizer.load_file(checkpoint / RMS_STATE_FILE)
        state = TrainerState.load(checkpoint)
        if state.stage != args.stage:
            raise SystemExit(f"{checkpoint}: a checkpoint of stage {state.stage!r}, this run is {args.stage!r}")
        if state.sampler and (state.sampler["num_windows"], state.sampler["num_relevant"]) != (
            sampler.num_windows, len(sampler.relevant_indices)
        ):
            raise SystemExit(
                f"{checkpoint}: saved with {state.sampler['num_windows']} windows ({state.sampler['num_relevant']} "
                f"relevant), this run has {sampler.num_windows} ({len(sampler.relevant_indices)}): the dataset or "
                "window length changed, so the run cannot continue exactly"
            )
        accelerator.print(f"Resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch})")

    # ---- Logging ----
    trainable = {g["name"]: sum(p.numel() for p in g["params"]) for g in param_groups}
    setup = {
        "setup": True,
        "stage": args.stage,
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": mixed_precision,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps
        * accelerator.num_processes,
        "window_length": data_args.window_length,
        "total_steps": total_steps,
        "train_windows": len(train_windows),
        "relevant_windows": len(train_windows.relevant_windows()),
        "parameters": {"total": sum(p.numel() for p in teacher.parameters()), **trainable},
        "learning_rates": {g["name"]: g["lr"] for g in param_groups},
        "origin": origin,
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    metrics_log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process, append=checkpoint is not None)
    metrics_log.write(setup)
    if log_with is not None:
        accelerator.init_trackers("dreamer", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})

    def save_checkpoint() -> None:
        tmp, final = temporary_checkpoint_dir(output_dir, state.global_step)
        # Draws consumed so far in this epoch, over all processes (the loader prefetches, so ask the loop).
        state.sampler = sampler.state_dict(
            position=state.batches_in_epoch * args.per_device_train_batch_size * accelerator.num_processes
        )
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
        if accelerator.is_main_process:
            normalizer.save_file(tmp / RMS_STATE_FILE)
            state.save(tmp)
            finalize_checkpoint(tmp, final)
            prune_checkpoints(output_dir, args.save_total_limit)
        accelerator.wait_for_everyone()

    def run_evaluation(save_predictions: bool = False) -> dict[str, float]:
        if eval_loader is None:
            return {}
        metrics, arrays = evaluate(model, eval_loader, accelerator, stage=args.stage, config=config, bins=bins,
                                   context_signal_level=args.context_signal_level, seed=args.seed)
        if save_predictions and accelerator.is_main_process:
            np.savez_compressed(output_dir / "eval_predictions.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
        return metrics

    # ---- The loop ----
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process,
                    desc=f"{args.stage}", dynamic_ncols=True)
    model.train()
    running: dict[str, list[float]] = {}
    step_nonfinite = False
    micro = 0
    windows_seen: list[list[int]] = []
    last_metrics: dict[str, float] = {}
    started = time.time()
    while state.global_step < total_steps:
        train_loader.set_epoch(state.epoch)
        epoch_loader = (
            accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            if state.batches_in_epoch > 0 else train_loader
        )
        for batch in epoch_loader:
            state.batches_in_epoch += 1
            if args.debug_dump_rank_state:
                windows_seen.extend([int(i), int(s)] for i, s in zip(batch["window_index"], batch["source"]))
            if args.debug_nan_at_step is not None and state.global_step == args.debug_nan_at_step:
                batch["latents"] = torch.full_like(batch["latents"], float("nan"))
            generator = step_generator(args.seed, state.global_step, micro, accelerator.process_index)
            with accelerator.accumulate(model):
                losses, counts, logs = compute_losses(
                    model, teacher, batch, stage=args.stage, args=args, data_args=data_args, config=config,
                    bins=bins, generator=generator, train_dynamics=train_dynamics,
                )
                if all_finite(losses, accelerator):
                    total, norm_logs = normalize_losses(normalizer, losses, counts)
                    accelerator.backward(total)
                    logs.update(norm_logs)
                else:
                    step_nonfinite = True  # no backward, no normaliser update; the whole step is dropped
                micro += 1
                if accelerator.sync_gradients:
                    if step_nonfinite:
                        state.skipped_steps += 1
                    else:
                        if args.max_grad_norm > 0:
                            logs["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            for key, value in logs.items():
                running.setdefault(key, []).append(value)
            if not accelerator.sync_gradients:
                continue
            # ---- one optimiser step done ----
            scheduler.step()
            state.global_step += 1
            micro = 0
            step_nonfinite = False
            progress.update(1)
            if state.global_step % args.logging_steps == 0 or state.global_step == total_steps:
                record = {"step": state.global_step, "epoch": state.epoch, "skipped_steps": state.skipped_steps,
                          "elapsed_s": round(time.time() - started, 2)}
                # Offsets or terms with no valid target in a micro-batch log NaN; average what was measured.
                record.update({k: float(np.mean(f)) for k, v in running.items() if (f := [x for x in v if math.isfinite(x)])})
                for group in optimizer.param_groups:
                    record[f"lr/{group['name']}"] = group["lr"]
                running = {}
                metrics_log.write(record)
                if log_with is not None:
                    accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.global_step)
                progress.set_postfix({k.split("/")[-1]: f"{record[k]:.3g}" for k in record if k.startswith("loss/")})
            if args.eval_steps > 0 and state.global_step % args.eval_steps == 0 and state.global_step < total_steps:
                last_metrics = run_evaluation()
                metrics_log.write({"step": state.global_step, **last_metrics})
                if log_with is not None:
                    accelerator.log(last_metrics, step=state.global_step)
            if args.save_steps > 0 and state.global_step % args.save_steps == 0:
                save_checkpoint()
            if state.global_step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
            continue
        break
    progress.close()

    # ---- Final: checkpoint, evaluation, model, card ----
    if args.save_steps >= 0 and not (output_dir / f"checkpoint-{state.global_step}").exists():
        save_checkpoint()
    final_metrics = run_evaluation(save_predictions=True)
    if final_metrics:
        metrics_log.write({"step": state.global_step, "final": True, **final_metrics})
        if log_with is not None:
            accelerator.log(final_metrics, step=state.global_step)
    if args.debug_dump_rank_state:
        dump_rank_state(output_dir, accelerator.process_index, accelerator.unwrap_model(model), normalizer, windows_seen)
    final_dir = output_dir / "final"
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(final_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        setup["skipped_steps"] = state.skipped_steps
        setup["steps"] = state.global_step
        write_model_card(final_dir, unwrapped.config, setup, final_metrics, data_args.dataset_path)
        (output_dir / "eval_metrics.json").write_text(json.dumps(final_metrics, indent=2))
        if args.push_to_hub:
            if not args.hub_model_id:
                raise SystemExit("push_to_hub needs hub_model_id")
            unwrapped.push_to_hub(args.hub_model_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_metrics


if __name__ == "__main__":
    main()
