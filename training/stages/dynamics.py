"""Stage `dynamics` (DreamerV4 phase 1): pretrain the dynamics transformer with shortcut forcing.

Per micro-batch: each frame gets a step size d and a signal level tau on the paper's grid, the latents are
noised (`z_tilde = (1 - tau) * noise + tau * z`), a share of the examples runs in independent-frame mode,
and the x-prediction is scored by the shortcut forcing loss (flow term at d_min, bootstrap term from two
half steps of the model itself otherwise). `AgentStage` reuses all of this for the dynamics term of phase 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modeling_dreamer.errors import ArgumentError, RunError
from training.stages.base import (
    Evaluation,
    Stage,
    StepLosses,
    device_index,
    load_source_config,
    model_kwargs,
    preset_config,
    routed,
    routed_rows,
    saved_architecture,
    schema_config_fields,
    select_rows,
)


@dataclass
class DynamicsArguments:
    """Knobs of the shortcut forcing objective (stages `dynamics` and `agent`)."""

    dynamics_loss_sources: list[str] = field(
        default_factory=lambda: ["uniform"], metadata={"help": "Draw sources whose examples get the dynamics loss."}
    )
    independent_frames_ratio: float = field(
        default=0.3, metadata={"help": "Share of examples whose frames are treated as separate images."}
    )
    shortcut_flow_fraction: float | None = field(
        default=None,
        metadata={"help": "Share of frames trained at the finest step size (the flow term; the others get the "
                  "bootstrap term). None: the paper's distribution, 1 / (log2(k_max) + 1) (docs/training.md)."},
    )

    def __post_init__(self) -> None:
        from data.sampler import DrawSource

        for source in self.dynamics_loss_sources:
            try:
                DrawSource.parse(source)
            except ValueError as error:
                raise ArgumentError(f"dynamics_loss_sources: {error}") from None
        if not 0.0 <= self.independent_frames_ratio <= 1.0:
            raise ArgumentError(f"independent_frames_ratio must be in [0, 1], got {self.independent_frames_ratio}")
        if self.shortcut_flow_fraction is not None and not 0.0 <= self.shortcut_flow_fraction <= 1.0:
            raise ArgumentError(f"shortcut_flow_fraction must be in [0, 1], got {self.shortcut_flow_fraction}")


@dataclass
class NoisedBatch:
    """One micro-batch prepared for the dynamics: clean and noised latents, per-frame noise levels, the model
    inputs other than latents, and which frames the dynamics loss counts."""

    z_clean: torch.Tensor  # (B, T, C, H, W) float32
    z_tilde: torch.Tensor  # (B, T, C, H, W)
    tau: torch.Tensor  # (B, T) signal level
    step_size: torch.Tensor  # (B, T)
    inputs: dict[str, Any]  # actions, action_mask, independent_frames
    dynamics_mask: torch.Tensor  # (B, T) bool
    dynamics_rows: list[int]  # the examples of dynamics_mask, on the host


class DynamicsStage(Stage):
    name = "dynamics"
    description = "DreamerV4 phase 1: dynamics pretraining with shortcut forcing"
    loss_terms = ("dynamics",)
    arguments_classes = (DynamicsArguments,)

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.dynamics_args = args.of(DynamicsArguments)

    def build_model(self, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        from modeling_dreamer import DreamerModel

        init_from = self.args.model.init_from
        if init_from is None:
            config = preset_config(self.args, schema)
            model = DreamerModel._from_config(config, **model_kwargs(self.args))
            return self.built(model, schema), {"init": "scratch", "preset": self.args.model.preset}
        source = load_source_config(init_from, schema)
        if saved_architecture(source) != "DreamerModel":
            raise RunError(
                f"--init_from {init_from}: holds a {saved_architecture(source)}; stage dynamics continues a "
                "DreamerModel (a phase-1 final/ folder)"
            )
        model = DreamerModel.from_pretrained(init_from, **model_kwargs(self.args))
        return self.built(model, schema), {"init": "pretrained", "init_from": init_from}

    def built(self, model: nn.Module, schema: Any) -> nn.Module:
        """Fit the model's time context to the training windows (`choose_time_context`), record the tokenizer whose
        latents it learns (the dataset's, so that the trained model refuses another) and remember its config
        (k_max, action space ...) for the loss computations."""
        model.config.time_context_length = choose_time_context(
            model.config.time_context_length, self.args.model.time_context_length, self.args.data.window_length)
        fields = schema_config_fields(schema)
        if fields["tokenizer_hash"]:
            model.config.tokenizer_name, model.config.tokenizer_hash = fields["tokenizer_name"], fields["tokenizer_hash"]
        self.model_config = model.config
        return model

    # ---- one micro-batch ----

    def noised_batch(self, batch: dict[str, Any], generator: torch.Generator, train_dynamics: bool = True) -> NoisedBatch:
        """Draw the shortcut-grid noise of a micro-batch (all randomness from `generator`, on its device)."""
        from training.objectives import add_noise, sample_signal_and_step

        z_clean = batch["latents"].float()
        b, t = z_clean.shape[:2]
        device = generator.device
        k_max = self.model_config.k_max
        tau, step_size = sample_signal_and_step(b, t, k_max, generator=generator, device=device,
                                                flow_fraction=self.dynamics_args.shortcut_flow_fraction)
        noise = torch.randn(z_clean.shape, generator=generator, device=device)
        independent = torch.rand(b, generator=generator, device=device) < self.dynamics_args.independent_frames_ratio
        dynamics_mask = routed(batch["source"], self.dynamics_args.dynamics_loss_sources, t)
        dynamics_rows = routed_rows(batch, self.dynamics_args.dynamics_loss_sources)
        if not train_dynamics:
            dynamics_mask, dynamics_rows = torch.zeros_like(dynamics_mask), []
        tau, step_size = self.observe_outside_dynamics(tau, step_size, dynamics_mask)
        actions = {name: batch[name] for name in self.model_config.action_space}
        inputs = dict(actions=actions, action_mask=batch["has_action"], independent_frames=independent,
                      **state_inputs(batch))
        return NoisedBatch(z_clean, add_noise(z_clean, tau, noise), tau, step_size, inputs, dynamics_mask, dynamics_rows)

    def observe_outside_dynamics(
        self, tau: torch.Tensor, step_size: torch.Tensor, dynamics_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels of frames outside the dynamics loss. Phase 1 trains every frame it sees: unchanged."""
        return tau, step_size

    def dynamics_loss(
        self, latent_pred: torch.Tensor, noised: NoisedBatch, unwrapped: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(loss, count, logs) of the shortcut forcing term for a forward pass's `latent_pred`."""
        from training.objectives import bootstrap_target, shortcut_forcing_loss

        d_min = 1.0 / self.model_config.k_max
        z_tilde, tau, step_size, mask = noised.z_tilde, noised.tau, noised.step_size, noised.dynamics_mask
        # The two bootstrap passes run, without gradient and on the live weights, on the examples routed to the
        # dynamics loss, chosen from the host copy of their draw sources (no wait on the device).
        rows = noised.dynamics_rows
        bootstrap = torch.zeros_like(noised.z_clean)
        if rows:
            inputs = noised.inputs
            sub_inputs = dict(
                actions={name: select_rows(value, rows) for name, value in inputs["actions"].items()},
                action_mask=select_rows(inputs["action_mask"], rows),
                independent_frames=select_rows(inputs["independent_frames"], rows),
                **{key: select_rows(inputs[key], rows) for key in ("state", "state_mask") if key in inputs},
            )

            def predict(z: torch.Tensor, level: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
                return unwrapped(z, level, step, **sub_inputs).latent_pred.float()

            target = bootstrap_target(predict, select_rows(z_tilde, rows), select_rows(tau, rows),
                                      select_rows(step_size, rows), d_min)
            bootstrap = target if len(rows) == bootstrap.shape[0] else bootstrap.index_copy(
                0, device_index(rows, bootstrap.device), target)
        shortcut = shortcut_forcing_loss(latent_pred.float(), noised.z_clean, z_tilde, tau, step_size, d_min, bootstrap, mask)
        logs = {"dynamics_flow": shortcut.flow_loss.detach(), "dynamics_bootstrap": shortcut.bootstrap_loss.detach()}
        return shortcut.loss, mask.sum(), logs

    def compute_losses(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, unwrapped: nn.Module
    ) -> StepLosses:
        noised = self.noised_batch(batch, generator)
        out = model(noised.z_tilde, noised.tau, noised.step_size, **noised.inputs)
        loss, count, logs = self.dynamics_loss(out.latent_pred, noised, unwrapped)
        logs["independent_share"] = noised.inputs["independent_frames"].float().mean()
        return StepLosses({"dynamics": loss}, {"dynamics": count}, logs)

    # ---- evaluation ----

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, seed: int) -> Evaluation:
        """The flow term of the shortcut loss (one-step x-prediction at d_min) on held-out windows, at signal
        levels drawn as in training."""
        records = [self.evaluate_batch(model, batch, generator) for batch, generator in self.eval_batches(loader, accelerator, seed)]
        arrays = gather_records(records, accelerator)
        return Evaluation({"dynamics_loss": float(arrays["dynamics_loss"].mean())}, arrays)

    def eval_batches(self, loader: Any, accelerator: Any, seed: int):
        """(batch, generator) pairs: one generator per evaluation, on the device, seeded by `seed`."""
        generator = torch.Generator(device=accelerator.device).manual_seed(seed + 7_777 + accelerator.process_index)
        for batch in loader:
            yield batch, generator

    def evaluate_batch(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        from training.objectives import add_noise, sample_signal_and_step, shortcut_forcing_loss

        config = self.model_config
        z_clean = batch["latents"].float()
        b, t = z_clean.shape[:2]
        d_min = 1.0 / config.k_max
        # Signal levels as in training (every grid is a subset of the finest one), all at the finest step.
        tau, _ = sample_signal_and_step(b, t, config.k_max, generator=generator, device=generator.device)
        step = torch.full_like(tau, d_min)
        noise = torch.randn(z_clean.shape, generator=generator, device=generator.device)
        z_tilde = add_noise(z_clean, tau, noise)
        actions = {name: batch[name] for name in config.action_space}
        out = model(z_tilde, tau, step, actions=actions, action_mask=batch["has_action"], **state_inputs(batch))
        flow = shortcut_forcing_loss(out.latent_pred.float(), z_clean, z_tilde, tau, step, d_min, None).loss
        # One entry per example (the batch mean repeated): gathering then averages over examples exactly.
        return {"dynamics_loss": flow.expand(b)}


def state_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The batch's state vector as model inputs (`state` float, `state_mask` bool), when the data has one."""
    if "state" not in batch:
        return {}
    return {"state": batch["state"].float(), "state_mask": batch["state_mask"].bool()}


def choose_time_context(configured: int | None, requested: int | None, window: int) -> int:
    """The time context C a model trains with on windows of `window` frames.

    `requested` (the `time_context_length` argument) wins, but may not exceed the window: a time layer cannot
    learn frame distances that no window holds. Otherwise the model's own context, narrowed to half the window:
    with C < T, frames t >= C - 1 of a window read no start frame (the frame whose action token is "no action"),
    which is what every frame of a live stream longer than C sees; the paper trains on batches longer than the
    context for this reason."""
    if requested is not None:
        if requested > window:
            raise RunError(f"time_context_length {requested} is longer than window_length {window}: a time layer "
                           "cannot learn to read frame distances that no training window holds")
        return requested
    half = max(1, window // 2)
    return half if configured is None or configured > half else configured


def gather_records(records: list[dict[str, torch.Tensor]], accelerator: Any) -> dict[str, Any]:
    """Concatenate per-batch records over batches and processes into numpy arrays (main process view)."""
    import numpy as np

    gathered: dict[str, list[np.ndarray]] = {}
    for record in records:
        # gloo cannot gather bool tensors: masks travel as uint8 and come back as bool.
        kinds = {k: v.dtype == torch.bool for k, v in record.items()}
        record = accelerator.gather_for_metrics({k: v.to(torch.uint8) if kinds[k] else v for k, v in record.items()})
        for key, value in record.items():
            value = value.cpu().numpy()
            gathered.setdefault(key, []).append(value.astype(bool) if kinds[key] else value)
    return {key: np.concatenate(values) for key, values in gathered.items()}
