"""Optimiser parameter groups, the learning-rate schedule and the mixed-precision choice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GroupScales:
    """Learning-rate multipliers of the three parameter roles."""

    backbone: float = 1.0
    agent: float = 1.0
    heads: float = 1.0


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: everything but the weight matrices of linear layers.

    Decay pulls towards zero, which is meaningful for projection matrices but would shrink normalisation
    gains and biases and turn learned embeddings and tokens (registers, agent slots, the no-action
    embedding) into a prior towards zero.
    """
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if not (isinstance(module, nn.Linear) and param_name == "weight"):
                exempt.add(full)
    return exempt


def build_param_groups(model: nn.Module, learning_rate: float, weight_decay: float, scales: GroupScales) -> list[dict]:
    """AdamW groups `<role>` and `<role>_no_decay` for each role with trainable parameters.

    Each group carries a `name` (logged) and its own `lr` = learning_rate * scale.
    """
    exempt = no_weight_decay_names(model)
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # A model without roles (the tokenizer) is all backbone.
        role = model.parameter_role(name) if hasattr(model, "parameter_role") else "backbone"
        key = f"{role}_no_decay" if name in exempt else role
        buckets.setdefault(key, []).append(param)
    groups = []
    for key in ("backbone", "backbone_no_decay", "agent", "agent_no_decay", "heads", "heads_no_decay"):
        if key not in buckets:
            continue
        role = key.removesuffix("_no_decay")
        groups.append(
            {
                "name": key,
                "params": buckets[key],
                "lr": learning_rate * getattr(scales, role),
                "weight_decay": 0.0 if key.endswith("_no_decay") else weight_decay,
            }
        )
    return groups


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int,
    schedule_kwargs: dict | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """`transformers.get_scheduler`: the schedules and warm-up of `TrainingArguments`, stepped once per
    optimiser step (every group keeps its own base learning rate)."""
    from transformers import get_scheduler

    return get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         scheduler_specific_kwargs=schedule_kwargs or None)


def choose_mixed_precision(requested: str, device_type: str, cuda_bf16_supported: bool) -> str:
    """The Accelerate `mixed_precision` value for a device.

    `auto`: bf16 on CUDA devices that support it, fp16 (with loss scaling) on older CUDA devices, `no` on MPS
    and CPU (bf16 on CPU has no fast kernels here and fp16 autocast is silently ignored there; fp16 with a
    GradScaler on MPS is unreliable). An explicit request is honoured where it works and
    refused with a reason where it cannot.
    """
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if cuda_bf16_supported else "fp16"
        return "no"
    if requested == "fp16" and device_type in ("cpu", "mps"):
        raise ValueError(f"mixed_precision=fp16 is not supported on {device_type}; use 'no' (or 'bf16' on CPU)")
    if requested == "bf16" and device_type == "cuda" and not cuda_bf16_supported:
        raise ValueError("mixed_precision=bf16 requested but this CUDA device has no bf16 support; use fp16")
    if requested == "bf16" and device_type == "mps":
        raise ValueError("mixed_precision=bf16 is not supported on mps; use 'no'")
    return requested
