"""The interface every training stage implements, and the helpers stages share.

A stage says what is trained and how: its loss terms, how it builds or grows the model, which
parameters train (and at which learning-rate scale), the raw losses of one micro-batch, and how it is
evaluated. `training.loop.train` runs any stage the same way: it never asks which stage it runs.
Adding a stage is one module with a `Stage` subclass plus an entry in `training.stages.STAGES`
(docs/training.md shows an example).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from data.sampler import DrawSource
from training.arguments import RunArguments
from modeling_dreamer.errors import ArgumentError, RunError
from training.optim import GroupScales


@dataclass
class StepLosses:
    """What a stage computed on one micro-batch.

    losses: term name -> raw loss, a scalar float32 tensor with gradient (each term is divided by its own
        running RMS in the loop, then the terms are summed).
    counts: term name -> number of targets the term averaged; 0 means the term had nothing to learn from
        in this micro-batch (it is then left out of its normaliser's update).
    logs: extra values to log (floats or tensors; `(value, present)` to count a value only where `present`),
        averaged over the logging window; tensors stay on the device until the log is written.
    """

    losses: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    logs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Held-out metrics (name -> float, logged as `eval/...`) and the gathered arrays behind them
    (saved as `eval_predictions.npz` at the end of a run)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Stage(ABC):
    """One training stage. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line for the model card, e.g. "DreamerV4 phase 1: dynamics pretraining"
    loss_terms: ClassVar[tuple[str, ...]]  # every term `compute_losses` may return, each with its own RMS normaliser
    arguments_classes: ClassVar[tuple[type, ...]] = ()  # dataclasses of the stage's own command-line knobs
    # Terms summed as they are, without a running-RMS normaliser (phase 3's PMPO and value terms: the paper
    # scales them by nothing, docs/objectives.md).
    unnormalized_terms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args: RunArguments) -> None:
        self.args = args
        self.num_processes = 1
        self.reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor

    def load_data(self, args: RunArguments, world_size: int) -> Any:
        """The run's `training.data.RunData`: training sampler and loaders, schema, what a checkpoint records
        about the data. Default: windows of a prepared latent dataset drawn by the reward-mixture sampler."""
        from training.data import load_windows

        return load_windows(args, world_size)

    def bind_processes(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor], num_processes: int) -> None:
        """Called by the loop once the processes are known: `reduce_sum(tensor)` sums a tensor over them (through
        Accelerate), for losses that need a cross-process count (PMPO's set sizes)."""
        self.reduce_sum, self.num_processes = reduce_sum, num_processes

    def bind_data(self, data: Any) -> None:
        """Called once with the run's `training.loop.RunData` before the model is built, for stages whose
        losses or evaluation need more than a batch (the sampler's draw probabilities, training windows
        for a baseline). Default: nothing."""

    @abstractmethod
    def build_model(self, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The model to train (float32, on the CPU) and where it came from (logged, and shown on the model
        card). `schema` is the prepared dataset's `data.schema.DatasetSchema`."""

    def configure_trainable(self, model: nn.Module) -> None:
        """Freeze what this stage does not train (`requires_grad_(False)`). Default: everything trains."""

    def loss_weights(self) -> dict[str, float]:
        """Weight of each loss term in the sum after RMS normalisation (terms not named weigh 1)."""
        return {}

    def model_card_lines(self, config: Any) -> list[str]:
        """Markdown bullets about the trained model for its card. Default: a Dreamer model's latents, action space
        and twohot bins."""
        action_space = ", ".join(
            f"{name} ({spec['type']}{', ' + str(spec['n']) if spec['type'] == 'categorical' else ''}"
            f"{', ' + spec['role'] if spec.get('role', 'both') != 'both' else ''})"
            for name, spec in config.action_space.items())
        return [f"- latents per frame: ({config.latent_channels}, {config.latent_height}, {config.latent_width}); "
                f"time context {config.time_context_length} frames",
                f"- action space: {action_space}",
                f"- twohot reward bins: {config.num_bins} over [{config.bins_low:.3f}, {config.bins_high:.3f}] in "
                "symlog space"]

    def clip_groups(self) -> dict[str, tuple[str, ...]]:
        """Parameter groups whose gradients are clipped to `max_grad_norm` each on their own: group name ->
        parameter-name prefixes. Empty (the default): one clip over every parameter. A stage whose heads learn
        from separate losses names one group per head, so one head's large gradient cannot shrink another's."""
        return {}

    def lr_scales(self) -> GroupScales:
        """Learning-rate multipliers of the parameter roles (backbone, agent, heads)."""
        return GroupScales()

    @abstractmethod
    def compute_losses(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, unwrapped: nn.Module
    ) -> StepLosses:
        """Raw loss terms of one micro-batch.

        model: the prepared model (call it for everything that back-propagates); unwrapped: the same model
        without the distributed wrapper, for extra passes without gradient; batch: `data.windows.collate_windows`
        output on the device; generator: the only source of randomness (seeded per step, micro-batch and
        process by the loop, which makes resumed runs bitwise identical).
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, seed: int) -> Evaluation:
        """Held-out metrics over `loader` (prepared by Accelerate: gather with `accelerator.gather_for_metrics`).
        Randomness comes from generators seeded with `seed`, so evaluations are comparable across steps.
        Runs without gradient; the loop puts the model in eval mode around it."""


# ------------------------------------------------------------------------------------------------
# Helpers shared by the stages
# ------------------------------------------------------------------------------------------------


def routed(source: torch.Tensor, sources: list[str], frames: int) -> torch.Tensor:
    """(B, T) bool: the frames of the examples whose draw source is one of `sources`. Compared with each
    source's code in turn: no tensor is built from host values (a copy to the device every step)."""
    allowed = torch.zeros_like(source, dtype=torch.bool)
    for name in sources:
        allowed = allowed | (source == int(DrawSource.parse(name)))
    return allowed[:, None].expand(-1, frames)


def routed_rows(batch: dict[str, Any], sources: list[str]) -> list[int]:
    """The batch positions of the examples whose draw source is one of `sources`, read from the host copy of the
    sources (`collate_windows`' `sources`), so that choosing them never waits on the device."""
    allowed = {int(DrawSource.parse(name)) for name in sources}
    return [i for i, source in enumerate(batch["sources"]) if source in allowed]


def device_index(rows: list[int], device: torch.device) -> torch.Tensor:
    """`rows` as an int64 index on `device`; on CUDA by a non-blocking copy from pinned memory (a plain copy of
    host memory would wait for the device)."""
    index = torch.tensor(rows, dtype=torch.long)
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index.to(device)


def select_rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """`tensor[rows]` along the batch dimension (the tensor itself when `rows` are all of it, in order)."""
    if rows == list(range(tensor.shape[0])):
        return tensor
    return tensor.index_select(0, device_index(rows, tensor.device))


def schema_config_fields(schema: Any) -> dict[str, Any]:
    """DreamerConfig fields the dataset determines: latent shape and action space."""
    channels, height, width = schema.latent_shape
    tokenizer = getattr(schema, "tokenizer", None) or {}
    return {
        "latent_channels": int(channels),
        "latent_height": int(height),
        "latent_width": int(width),
        "action_space": dict(schema.action_space),
        "state_size": len(getattr(schema, "state_names", [])),
        "state_names": list(getattr(schema, "state_names", [])),
        "tokenizer_name": tokenizer.get("name"),
        "tokenizer_hash": tokenizer.get("hash"),
    }


def preset_config(args: RunArguments, schema: Any, **fields: Any) -> Any:
    """A new model's `DreamerConfig`: the `preset`, the fields the dataset fixes, `fields`, then the recipe's
    `model_overrides`; a bad preset or override is an `ArgumentError` naming it."""
    from modeling_dreamer import DreamerConfig

    try:
        return DreamerConfig.from_preset(args.model.preset, **{**schema_config_fields(schema), **fields,
                                                               **args.model.overrides()})
    except (ValueError, TypeError) as error:
        raise ArgumentError(f"preset {args.model.preset!r} with model_overrides {args.model.model_overrides}: "
                            f"{error}") from None


def load_source_config(init_from: str, schema: Any) -> Any:
    """The config of an `--init_from` folder, checked against the dataset before any weight is read.

    Raises `RunError` naming the folder and the problem: no such folder, no config.json, other latents,
    another action space.
    """
    from modeling_dreamer import DreamerConfig

    folder = Path(init_from)
    if not folder.is_dir():
        raise RunError(f"--init_from {init_from}: no such folder (a save_pretrained folder is expected)")
    if not (folder / "config.json").is_file():
        raise RunError(f"--init_from {init_from}: no config.json in the folder; it is not a save_pretrained folder")
    try:
        config = DreamerConfig.from_pretrained(init_from)
    except (OSError, ValueError) as error:
        raise RunError(f"--init_from {init_from}: cannot read {folder / 'config.json'}: {error}") from None
    expected = schema_config_fields(schema)
    for name in ("latent_channels", "latent_height", "latent_width"):
        if getattr(config, name) != expected[name]:
            raise RunError(
                f"--init_from {init_from}: {name}={getattr(config, name)} but the dataset has {expected[name]}; "
                "the checkpoint was trained on other latents"
            )
    if dict(config.action_space) != expected["action_space"]:
        raise RunError(
            f"--init_from {init_from}: its action space {config.action_space} differs from the dataset's "
            f"{expected['action_space']}"
        )
    if list(config.state_names if config.state_size else []) != expected["state_names"]:
        raise RunError(f"--init_from {init_from}: its state vector {config.state_names[:config.state_size]} differs "
                       f"from the dataset's {expected['state_names']}")
    if config.tokenizer_hash and expected["tokenizer_hash"] and config.tokenizer_hash != expected["tokenizer_hash"]:
        raise RunError(f"--init_from {init_from}: trained on the latents of tokenizer {config.tokenizer_name!r} "
                       f"(hash {config.tokenizer_hash}); the dataset's come from {expected['tokenizer_name']!r} "
                       f"(hash {expected['tokenizer_hash']})")
    return config


def saved_architecture(config: Any) -> str:
    """The class name a save_pretrained folder was saved from (`config.architectures`)."""
    return (config.architectures or ["DreamerModel"])[0]


def model_kwargs(args: RunArguments) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained` / `from_config` shared by the stages."""
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if args.model.attn_implementation:
        kwargs["attn_implementation"] = args.model.attn_implementation
    return kwargs
