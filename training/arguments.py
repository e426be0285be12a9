"""Typed arguments of `train.py`, parsed by `transformers.HfArgumentParser` from a YAML recipe plus
command-line overrides (`--key value`, later wins).

Arguments that `transformers.TrainingArguments` also has keep its names and meaning; the others are
named for what they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.sampler import DrawSource



@dataclass
class ModelArguments:
    """Which model to build or load."""

    preset: str = field(default="tiny", metadata={"help": "DreamerConfig preset: tiny | small | medium | large."})
    init_from: str | None = field(
        default=None,
        metadata={"help": "A save_pretrained folder to start from: a DreamerModel (phase-1 backbone, grown into an "
                  "agent in stage `agent`) or a DreamerAgentModel. None trains from scratch."},
    )
    model_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of DreamerConfig fields overriding the preset (in YAML: a mapping)."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flex_attention (sdpa is used only where no logit soft cap applies, see docs/model.md)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Stage `agent`: keep the pretrained dynamics transformer fixed; only agent tokens and heads "
                  "train, and the dynamics loss is logged but not optimised."},
    )
    bins_low: float | None = field(
        default=None, metadata={"help": "Twohot range low end (symlog space). None: the dataset's recommendation."}
    )
    bins_high: float | None = field(
        default=None, metadata={"help": "Twohot range high end (symlog space). None: the dataset's recommendation."}
    )

    def overrides(self) -> dict[str, Any]:
        if not self.model_overrides:
            return {}
        parsed = json.loads(self.model_overrides)
        if not isinstance(parsed, dict):
            raise ValueError(f"model_overrides must be a JSON object, got {self.model_overrides!r}")
        return parsed


@dataclass
class DataArguments:
    """Where the prepared dataset is and how windows are drawn from it."""

    dataset_path: str = field(default="", metadata={"help": "Folder written by `python -m data.prepare`."})
    window_length: int = field(default=32, metadata={"help": "Frames per training window (T)."})
    window_stride: int | None = field(default=None, metadata={"help": "Window start spacing; None = window_length."})
    relevant_fraction: float = field(
        default=0.5, metadata={"help": "Probability that a draw is a window containing a nonzero reward."}
    )
    independent_frames_ratio: float = field(
        default=0.3, metadata={"help": "Share of examples whose frames are treated as separate images."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers (0 is fastest on 2 cores)."})
    max_eval_windows: int | None = field(default=None, metadata={"help": "Cap on validation windows per evaluation."})


@dataclass
class DreamerTrainingArguments:
    """The optimisation, logging and checkpointing of one run."""

    output_dir: str = field(default="runs/dreamer", metadata={"help": "Checkpoints, metrics and final model go here."})
    stage: str = field(default="agent", metadata={"help": "dynamics (phase 1) | agent (phase 2)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimiser steps; overrides num_train_epochs when > 0."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs of the mixture sampler (see docs/data.md)."})
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine | constant | linear."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables it."})
    backbone_lr_scale: float = field(
        default=0.3, metadata={"help": "Stage agent: LR multiplier of the pretrained dynamics transformer."}
    )
    agent_lr_scale: float = field(default=1.0, metadata={"help": "LR multiplier of the new agent tokens."})
    head_lr_scale: float = field(default=1.0, metadata={"help": "LR multiplier of the reward / policy heads."})
    rms_decay: float = field(default=0.99, metadata={"help": "EMA decay of the running-RMS loss normalisers."})
    dynamics_loss_sources: list[str] = field(
        default_factory=lambda: ["uniform"], metadata={"help": "Draw sources whose examples get the dynamics loss."}
    )
    reward_loss_sources: list[str] = field(
        default_factory=lambda: ["uniform", "relevant"], metadata={"help": "Sources that get the reward loss."}
    )
    bc_loss_sources: list[str] = field(
        default_factory=lambda: ["relevant"], metadata={"help": "Sources that get the behaviour-cloning loss."}
    )
    context_signal_level: float = field(
        default=0.9,
        metadata={"help": "Signal level at which the agent observes frames at inference (the paper's slightly "
                  "corrupted context): used for evaluation, and in stage `agent` for the examples that are not "
                  "routed to the dynamics loss."},
    )
    mixed_precision: str = field(default="auto", metadata={"help": "auto | no | bf16 | fp16 (auto: by device)."})
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps; 0: only at the end."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps; 0: only at the end."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    seed: int = 42
    report_to: str = field(default="tensorboard", metadata={"help": "none | tensorboard | wandb | all."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "latest | a checkpoint folder."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    debug_nan_at_step: int | None = field(
        default=None, metadata={"help": "Testing aid: corrupt the batch of this optimiser step with NaN."}
    )

    debug_dump_rank_state: bool = field(
        default=False,
        metadata={"help": "Testing aid: each process writes rank_state_<rank>.json (weights checksum, normaliser "
                  "state, windows it trained on) at the end."},
    )

    def __post_init__(self) -> None:
        if self.stage not in ("dynamics", "agent"):
            raise ValueError(f"stage must be 'dynamics' or 'agent', got {self.stage!r}")
        for name in ("dynamics_loss_sources", "reward_loss_sources", "bc_loss_sources"):
            for source in getattr(self, name):
                try:
                    DrawSource.parse(source)
                except ValueError as error:
                    raise ValueError(f"{name}: {error}") from None
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto | no | bf16 | fp16, got {self.mixed_precision!r}")


def recipe_to_argv(recipe: dict[str, Any]) -> list[str]:
    """Turn a YAML recipe mapping into `--key value` tokens for HfArgumentParser.

    A nested mapping (only `model_overrides`) becomes a JSON string; a list becomes several values.
    """
    argv: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, dict):
            argv.append(json.dumps(value))
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, DreamerTrainingArguments]:
    """`--config recipe.yaml` (optional) then any `--key value` overrides."""
    import sys

    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_argv: list[str] = []
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file")
        path = Path(argv[at + 1])
        if not path.is_file():
            raise SystemExit(f"--config {path}: no such file")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, dict):
            raise SystemExit(f"--config {path}: expected a mapping of argument names to values")
        recipe_argv = recipe_to_argv(recipe)
        del argv[at : at + 2]
    parser = HfArgumentParser((ModelArguments, DataArguments, DreamerTrainingArguments))
    parser.description = (
        "Train a Dreamer world model (--stage dynamics) or finetune it into an agent (--stage agent). "
        "--config recipe.yaml reads arguments from a YAML mapping; --key value overrides follow it. "
        "See docs/training.md."
    )
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=recipe_argv + argv)
    if not data_args.dataset_path:
        raise SystemExit("dataset_path is required (the folder written by `python -m data.prepare`)")
    return model_args, data_args, train_args
