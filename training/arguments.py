"""Typed arguments of `train.py`, parsed by `transformers.HfArgumentParser` from a YAML recipe plus
command-line overrides (`--key value`, later wins).

Three dataclasses are common to every stage (`ModelArguments`, `DataArguments`,
`DreamerTrainingArguments`); each stage may add its own dataclass of knobs (`Stage.arguments_classes`).
Arguments that `transformers.TrainingArguments` also has keep its names and meaning; the others are
named for what they are. An argument that the chosen stage does not read is refused, not ignored.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from modeling_dreamer.errors import ArgumentError

T = TypeVar("T")

# `lr_scheduler_type` values: transformers.get_scheduler's schedules that need no metric feedback.
SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)


# Arguments of earlier versions: name -> (the value that meant "off", why it went). docs/reward_diagnosis.md has
# the measurements behind the first three.
REMOVED_ARGUMENTS: dict[str, tuple[Any, str]] = {
    "relevant_balance": ("none", "drawing gain and penalty windows equally often ranked deaths better but raised "
                                 "P(r < 0) elsewhere; no recipe used it"),
    "reward_importance_weights": (False, "weighting reward targets by p_uniform / p_sampler slowed event learning; "
                                         "no recipe used it"),
    "bc_normalization": ("joint", "normalising each action component apart did not lift the rare keys; no recipe "
                                  "used it"),
    "debug_nan_at_step": (None, "tests inject faults by replacing the loop's pieces"),
    "debug_inf_grad_at_step": (None, "tests inject faults by replacing the loop's pieces"),
    "debug_dump_rank_state": (False, "tests record rank state by replacing the loop's pieces"),
}


@dataclass
class ModelArguments:
    """Which model to build or load."""

    preset: str = field(default="tiny", metadata={"help": "DreamerConfig preset: tiny | small | medium | large."})
    init_from: str | None = field(
        default=None,
        metadata={"help": "A save_pretrained folder to start from (what it must hold depends on the stage: see "
                  "docs/training.md). None trains from scratch."},
    )
    model_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of DreamerConfig fields overriding the preset (in YAML: a mapping)."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager | sdpa | flex_attention; None: the model's default (docs/model.md)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    time_context_length: int | None = field(
        default=None,
        metadata={"help": "Frames a time layer reads (C, its own included), at most window_length. None: the model's "
                  "own, narrowed to half the training window, so that most trained frames have no start frame in "
                  "view, as in a live stream (stages dynamics and agent; docs/training.md)."},
    )

    def __post_init__(self) -> None:
        if self.time_context_length is not None and self.time_context_length < 1:
            raise ArgumentError(f"time_context_length must be >= 1 or None, got {self.time_context_length}")

    def overrides(self) -> dict[str, Any]:
        if not self.model_overrides:
            return {}
        try:
            parsed = json.loads(self.model_overrides)
        except json.JSONDecodeError as error:
            raise ArgumentError(f"model_overrides is not valid JSON ({error}): {self.model_overrides!r}") from None
        if not isinstance(parsed, dict):
            raise ArgumentError(f"model_overrides must be a JSON object, got {self.model_overrides!r}")
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
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers (0 is fastest on 2 cores)."})
    max_eval_windows: int | None = field(default=None, metadata={"help": "Cap on validation windows per evaluation."})


@dataclass
class DreamerTrainingArguments:
    """The optimisation, logging and checkpointing of one run, whatever the stage."""

    output_dir: str = field(default="runs/dreamer", metadata={"help": "Checkpoints, metrics and final model go here."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in a non-empty output_dir, deleting the old run's checkpoints, final model "
                  "and metrics. Without it a non-empty output_dir is refused unless the run resumes."},
    )
    stage: str = field(default="agent", metadata={"help": "Which stage to train (see docs/training.md)."})
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
    lr_scheduler_type: str = field(default="cosine", metadata={"help": " | ".join(SCHEDULES) + " (transformers.get_scheduler)."})
    lr_scheduler_kwargs: str | None = field(
        default=None, metadata={"help": "JSON object of extra schedule arguments (e.g. min_lr_rate for cosine_with_min_lr)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables it."})
    rms_decay: float = field(default=0.99, metadata={"help": "EMA decay of the running-RMS loss normalisers."})
    weight_average_start: float | None = field(
        default=None,
        metadata={"help": "Average the weights of every optimiser step after this fraction of the run (uniformly, "
                  "stochastic weight averaging); evaluation and the final model use the average. None: off "
                  "(docs/training.md)."},
    )
    mixed_precision: str = field(default="auto", metadata={"help": "auto | no | bf16 | fp16 (auto: by device)."})
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (Inductor)."})
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps; 0: only at the end."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps; 0: only at the end."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    seed: int = 42
    report_to: str = field(default="tensorboard", metadata={"help": "none | tensorboard | wandb | all."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "latest | a checkpoint folder."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ArgumentError(f"mixed_precision must be auto | no | bf16 | fp16, got {self.mixed_precision!r}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ArgumentError(f"lr_scheduler_type must be one of {' | '.join(SCHEDULES)}, got {self.lr_scheduler_type!r}")
        if self.lr_scheduler_type == "constant" and self.warmup_steps > 0:
            # transformers' `constant` schedule has no warm-up and would silently drop it.
            raise ArgumentError("lr_scheduler_type=constant ignores warmup_steps; use constant_with_warmup")
        if self.weight_average_start is not None and not 0.0 <= self.weight_average_start < 1.0:
            raise ArgumentError(f"weight_average_start must be in [0, 1) or None, got {self.weight_average_start}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")

    def scheduler_kwargs(self) -> dict[str, Any]:
        if not self.lr_scheduler_kwargs:
            return {}
        parsed = json.loads(self.lr_scheduler_kwargs)
        if not isinstance(parsed, dict):
            raise ArgumentError(f"lr_scheduler_kwargs must be a JSON object, got {self.lr_scheduler_kwargs!r}")
        return parsed


@dataclass
class RunArguments:
    """Everything `train.py` parsed: the common dataclasses and the stage's own (by type)."""

    model: ModelArguments
    data: DataArguments
    training: DreamerTrainingArguments
    stage_arguments: dict[type, Any] = field(default_factory=dict)

    def of(self, cls: type[T]) -> T:
        """The parsed instance of a stage's arguments dataclass."""
        return self.stage_arguments[cls]

    def as_dict(self) -> dict[str, Any]:
        """Every argument by name (flat, as on the command line)."""
        values: dict[str, Any] = {}
        for instance in (self.model, self.data, self.training, *self.stage_arguments.values()):
            values.update(dataclasses.asdict(instance))
        return values


def recipe_to_argv(recipe: dict[str, Any]) -> list[str]:
    """Turn a YAML recipe mapping into `--key value` tokens for HfArgumentParser.

    A nested mapping (`model_overrides`, `lr_scheduler_kwargs`) becomes a JSON string; a list becomes
    several values.
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


def _read_recipe(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `--config recipe.yaml` out of argv: (recipe tokens, remaining argv)."""
    import yaml

    if "--config" not in argv:
        return [], argv
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise ArgumentError("--config needs a YAML file")
    path = Path(argv[at + 1])
    if not path.is_file():
        raise ArgumentError(f"--config {path}: no such file")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ArgumentError(f"--config {path}: not valid YAML ({error})") from None
    if not isinstance(recipe, dict):
        raise ArgumentError(f"--config {path}: expected a mapping of argument names to values")
    return recipe_to_argv(recipe), argv[:at] + argv[at + 2 :]


def parse_arguments(argv: list[str] | None, stages: dict[str, Any]) -> RunArguments:
    """`--config recipe.yaml` (optional) then any `--key value` overrides, for the stages in `stages`
    (name -> Stage class). Refuses an unknown stage and any argument the chosen stage does not read."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_argv, argv = _read_recipe(argv)
    stage_classes: list[type] = []
    for stage in stages.values():
        stage_classes += [cls for cls in stage.arguments_classes if cls not in stage_classes]
    parser = HfArgumentParser((ModelArguments, DataArguments, DreamerTrainingArguments, *stage_classes))
    parser.description = (
        f"Train a Dreamer world model or agent; --stage is one of {sorted(stages)}. --config recipe.yaml reads "
        "arguments from a YAML mapping; --key value overrides follow it. See docs/training.md."
    )
    try:
        model, data, training, *extra = parser.parse_args_into_dataclasses(args=recipe_argv + argv)
    except ValueError:  # HfArgumentParser: "Some specified arguments are not used ..."
        removed = [f"--{name} ({why})" for name, (_, why) in REMOVED_ARGUMENTS.items() if f"--{name}" in recipe_argv + argv]
        if removed:
            raise ArgumentError(f"arguments this version no longer has: {'; '.join(removed)}; remove them") from None
        raise
    if training.stage not in stages:
        raise ArgumentError(f"--stage {training.stage!r}: unknown stage; choose one of {sorted(stages)}")
    if not data.dataset_path:
        raise ArgumentError("dataset_path is required (the folder written by `python -m data.prepare`)")
    used = stages[training.stage].arguments_classes
    for instance in extra:
        if type(instance) in used:
            continue
        for item in dataclasses.fields(instance):
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            if getattr(instance, item.name) != default:
                raise ArgumentError(f"--{item.name} does not apply to stage {training.stage!r}; remove it")
    return RunArguments(model, data, training, {type(x): x for x in extra if type(x) in used})
