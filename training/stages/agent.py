"""Stage `agent` (DreamerV4 phase 2): finetune the dynamics into an agent.

The model is a `DreamerAgentModel` (grown from a phase-1 `DreamerModel`, or continued from an agent). Per
micro-batch, three loss terms, each normalised by its own running RMS in the loop:
- `dynamics`: the shortcut forcing loss of phase 1, on the examples routed to it (`dynamics_loss_sources`);
- `reward`: multi-token twohot reward prediction, `h_t` -> `reward[t + n]`, n = 0..L (`reward_loss_sources`),
  offset 0 weighing `mtp_first_offset_weight` of it (docs/reward_diagnosis.md);
- `bc`: multi-token behaviour cloning of the factorised policy, `h_t` -> `actions[t + n]` (`bc_loss_sources`).
Examples outside the dynamics loss are observed as the agent sees frames at inference: at
`context_signal_level` and the finest step (docs/training.md explains this choice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training.metrics import (
    average_precision,
    balanced_accuracy,
    calibration_error,
    majority_rate,
    masked_mean,
    r_squared,
    roc_auc,
)
from training.optim import GroupScales
from modeling_dreamer.errors import ArgumentError, RunError
from training.stages.base import (
    Evaluation,
    StepLosses,
    load_source_config,
    model_kwargs,
    preset_config,
    routed,
    saved_architecture,
)
from training.stages.dynamics import DynamicsArguments, DynamicsStage, gather_records


# Fresh observation-noise draws the reward probe is also scored on (`eval/probe/reward_auc_draws_mean`): its
# AUC moved between 0.978 and 0.991 over ten draws of the same held-out frames of real matches.
PROBE_NOISE_DRAWS = 8


@dataclass
class AgentArguments:
    """Knobs of agent finetuning."""

    reward_loss_sources: list[str] = field(
        default_factory=lambda: ["uniform", "relevant"], metadata={"help": "Draw sources that get the reward loss."}
    )
    bc_loss_sources: list[str] = field(
        default_factory=lambda: ["relevant"], metadata={"help": "Draw sources that get the behaviour-cloning loss."}
    )
    mtp_first_offset_weight: float = field(
        default=0.5,
        metadata={"help": "Weight of offset 0 (the reward and action at t itself) in the reward and bc multi-token "
                  "losses; offsets 1..L share the rest equally. 1 / (L + 1) weighs every offset alike (eq. 9 as a "
                  "mean). Why 0.5: docs/reward_diagnosis.md."},
    )
    reward_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the reward term in the sum of RMS-normalised losses (the others weigh 1; "
                  "the real-data recipes use 3, docs/reward_diagnosis.md)."},
    )
    probe_baseline: bool = field(
        default=True,
        metadata={"help": "Evaluate linear probes on the current and previous latents beside the model "
                  "(eval/probe/...): the bar the reward and policy heads must clear."},
    )
    probe_max_windows: int = field(
        default=2048, metadata={"help": "Training windows the probes are fitted on (spread evenly over the data)."}
    )
    context_signal_level: float = field(
        default=0.9,
        metadata={"help": "Signal level at which the agent observes frames at inference (the paper's slightly "
                  "corrupted context): used for evaluation and for the examples not routed to the dynamics loss."},
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Keep the pretrained dynamics transformer fixed; only agent tokens and heads train, and the "
                  "dynamics loss is evaluated but not optimised."},
    )
    backbone_lr_scale: float = field(default=0.3, metadata={"help": "LR multiplier of the pretrained dynamics transformer."})
    agent_lr_scale: float = field(default=1.0, metadata={"help": "LR multiplier of the new agent tokens."})
    head_lr_scale: float = field(default=1.0, metadata={"help": "LR multiplier of the reward and policy heads."})
    bins_low: float | None = field(
        default=None, metadata={"help": "Twohot range low end (symlog space). None: the dataset's recommendation."}
    )
    bins_high: float | None = field(
        default=None, metadata={"help": "Twohot range high end (symlog space). None: the dataset's recommendation."}
    )
    bc_positive_weight: str = field(
        default="none",
        metadata={"help": "Weight of a binary key's presses in behaviour cloning: none (1, the likelihood), auto "
                  "((1 - p) / p from the key's press rate p in the training windows, capped at "
                  "bc_positive_weight_cap), or a JSON object {component: weight} (docs/training.md)."},
    )
    bc_positive_weight_cap: float = field(default=20.0, metadata={"help": "Largest weight `auto` gives."})
    predict_state: bool = field(
        default=True, metadata={"help": "With a state vector in the data, predict it from the agent state (an "
                                "auxiliary `state` loss term)."})

    def __post_init__(self) -> None:
        from data.sampler import DrawSource

        for name in ("reward_loss_sources", "bc_loss_sources"):
            for source in getattr(self, name):
                try:
                    DrawSource.parse(source)
                except ValueError as error:
                    raise ArgumentError(f"{name}: {error}") from None
        if not 0.0 <= self.context_signal_level <= 1.0:
            raise ArgumentError(f"context_signal_level must be in [0, 1], got {self.context_signal_level}")
        if not 0.0 < self.mtp_first_offset_weight <= 1.0:
            raise ArgumentError(f"mtp_first_offset_weight must be in (0, 1], got {self.mtp_first_offset_weight}")
        if self.reward_loss_weight <= 0:
            raise ArgumentError(f"reward_loss_weight must be > 0, got {self.reward_loss_weight}")
        if self.probe_max_windows < 1:
            raise ArgumentError(f"probe_max_windows must be >= 1, got {self.probe_max_windows}")
        if self.bc_positive_weight not in ("none", "auto"):
            try:
                weights = json.loads(self.bc_positive_weight)
            except json.JSONDecodeError:
                weights = None
            if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in weights.values()):
                raise ArgumentError(f"bc_positive_weight must be none, auto or a JSON object of positive weights, got "
                                    f"{self.bc_positive_weight!r}")
        if self.bc_positive_weight_cap < 1:
            raise ArgumentError(f"bc_positive_weight_cap must be >= 1, got {self.bc_positive_weight_cap}")


class AgentStage(DynamicsStage):
    name = "agent"
    description = "DreamerV4 phase 2: agent finetuning (dynamics + multi-token reward and behaviour cloning)"
    loss_terms = ("dynamics", "reward", "bc")
    arguments_classes = (DynamicsArguments, AgentArguments)

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.agent_args = args.of(AgentArguments)
        self.train_dynamics = not self.agent_args.freeze_backbone
        self.probe_windows: Any = None
        self.probes: Any = None  # training.probe_baseline.ProbeBaseline, fitted at the first evaluation
        self.episode_ends = False
        self.press_rates: dict[str, float] = {}

    def bind_data(self, data: Any) -> None:
        """Keeps tiled training windows for the probe baseline (the baseline's frames then do not depend on
        `window_stride`)."""
        from data.windows import WindowDataset

        windows = data.train_windows
        tiled = windows is None or windows.stride == windows.window_length
        self.probe_windows = windows if tiled else WindowDataset(data.datasets["train"], windows.window_length)
        # Recorded environments end their episodes: the agent then learns to predict the end (`continuation`).
        self.episode_ends = windows is not None and bool(windows.terminated.any())
        self.press_rates = press_rates(windows) if windows is not None else {}

    # ---- model ----

    def twohot_range(self, schema: Any) -> dict[str, float]:
        low, high = schema.recommended_twohot_range
        a = self.agent_args
        return {"bins_low": float(low if a.bins_low is None else a.bins_low),
                "bins_high": float(high if a.bins_high is None else a.bins_high)}

    def build_model(self, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        from modeling_dreamer import DreamerAgentModel

        init_from, overrides = self.args.model.init_from, self.args.model.overrides()
        kwargs = model_kwargs(self.args)
        heads = {**({"continuation_head": True} if self.episode_ends else {}),
                 **({"predict_state": True} if self.agent_args.predict_state and schema.state_names else {})}
        overrides = {**heads, **overrides}
        if init_from is None:
            config = preset_config(self.args, schema, **self.twohot_range(schema), **heads)
            model = DreamerAgentModel._from_config(config, **kwargs)
            return self.built(model, schema), {"init": "scratch", "preset": self.args.model.preset}
        source = load_source_config(init_from, schema)
        if saved_architecture(source) == "DreamerAgentModel":
            # Continue an agent: its twohot range is part of its trained reward head.
            given = {k: v for k, v in (("bins_low", self.agent_args.bins_low), ("bins_high", self.agent_args.bins_high)) if v is not None}
            changed = {k: v for k, v in given.items() if getattr(source, k) != v}
            if changed:
                raise RunError(f"--init_from {init_from}: an agent with a trained reward head over "
                                 f"[{source.bins_low}, {source.bins_high}]; {changed} cannot be applied to it")
            model = DreamerAgentModel.from_pretrained(init_from, **overrides, **kwargs)
            return self.built(model, schema), {"init": "pretrained agent", "init_from": init_from}
        # Grow a phase-1 backbone: the twohot range comes from the dataset, the rest from the checkpoint.
        model = DreamerAgentModel.from_backbone(init_from, **self.twohot_range(schema), **overrides, **kwargs)
        return self.built(model, schema), {"init": "grown from backbone", "init_from": init_from}

    def built(self, model: nn.Module, schema: Any) -> nn.Module:
        """As the dynamics stage, and the model records the context signal level it is trained with (what
        inference feeds observed frames at). With episode ends, the continuation head is one more loss term."""
        model.config.context_signal_level = self.agent_args.context_signal_level
        extra = (("continuation",) if model.config.continuation_head else ()) + (
            ("state",) if model.config.predict_state else ())
        self.loss_terms = (*type(self).loss_terms, *extra)
        return super().built(model, schema)

    def loss_weights(self) -> dict[str, float]:
        """`reward_loss_weight` for the reward term; the others weigh 1."""
        return {"reward": self.agent_args.reward_loss_weight}

    @property
    def context_level(self) -> float:
        """`context_signal_level` on the model's signal-level grid (the nearest multiple of 1 / K_max): the
        noise and the model's signal-level embedding must agree."""
        return self.model_config.context_tau

    def configure_trainable(self, model: nn.Module) -> None:
        """The value head is phase 3's; `freeze_backbone` also fixes the dynamics transformer."""
        for name, param in model.named_parameters():
            if name.startswith("value_head.") or (self.agent_args.freeze_backbone and model.parameter_role(name) == "backbone"):
                param.requires_grad_(False)

    def lr_scales(self) -> GroupScales:
        a = self.agent_args
        return GroupScales(backbone=a.backbone_lr_scale, agent=a.agent_lr_scale, heads=a.head_lr_scale)

    # ---- one micro-batch ----

    def observe_outside_dynamics(
        self, tau: torch.Tensor, step_size: torch.Tensor, dynamics_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples that do not train the dynamics need no shortcut-grid noise: the agent sees them as it sees
        frames at inference, slightly corrupted (context_signal_level) at the finest step."""
        level = torch.full_like(tau, self.context_level)
        return torch.where(dynamics_mask, tau, level), torch.where(dynamics_mask, step_size, 1.0 / self.model_config.k_max)

    def compute_losses(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, unwrapped: nn.Module
    ) -> StepLosses:
        noised = self.noised_batch(batch, generator, train_dynamics=self.train_dynamics)
        out = model(noised.z_tilde, noised.tau, noised.step_size, **noised.inputs)
        result = StepLosses({}, {}, {"independent_share": noised.inputs["independent_frames"].float().mean()})
        if self.train_dynamics:
            loss, count, logs = self.dynamics_loss(out.latent_pred, noised, unwrapped)
            result.losses["dynamics"], result.counts["dynamics"] = loss, count
            result.logs.update(logs)
        loss, count, logs = self.reward_loss(out, batch, unwrapped)
        result.losses["reward"], result.counts["reward"] = loss, count
        result.logs.update(logs)
        loss, count, logs = self.behaviour_cloning_loss(out, batch, unwrapped)
        result.losses["bc"], result.counts["bc"] = loss, count
        result.logs.update(logs)
        if out.continue_logits is not None:
            result.losses["continuation"], result.counts["continuation"] = self.continuation_loss(out, batch)
        if out.state_pred is not None:
            result.losses["state"], result.counts["state"] = self.state_loss(out, batch)
        return result

    def state_loss(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared error of the state head on the frame's known state values (the auxiliary term)."""
        known = batch["state_mask"].bool()
        error = torch.where(known, out.state_pred.float() - batch["state"].float(), 0.0).square()
        count = known.sum()
        return error.sum() / count.clamp_min(1), count

    def positive_weights(self) -> dict[str, float]:
        """`bc_positive_weight` per binary policy component (none: {})."""
        a = self.agent_args
        if a.bc_positive_weight == "none":
            return {}
        if a.bc_positive_weight == "auto":
            return {name: float(min(a.bc_positive_weight_cap, max(1.0, (1 - p) / p if p > 0 else a.bc_positive_weight_cap)))
                    for name, p in self.press_rates.items()}
        weights = json.loads(a.bc_positive_weight)
        unknown = sorted(set(weights) - set(self.press_rates))
        if unknown:
            raise RunError(f"bc_positive_weight names {unknown}, which are not binary policy components "
                           f"({sorted(self.press_rates)})")
        return {name: float(w) for name, w in weights.items()}

    def continuation_loss(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logistic loss of the continuation head against "the episode goes on after this frame" (not terminated;
        a truncated episode goes on), on the frames of the examples routed to the reward loss."""
        from training.objectives import continuation_loss

        valid = routed(batch["source"], self.agent_args.reward_loss_sources, batch["terminated"].shape[1])
        return continuation_loss(out.continue_logits, batch["terminated"], valid)

    def reward_loss(self, out: Any, batch: dict[str, Any], unwrapped: nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """MTP twohot reward loss on the examples routed to it."""
        from training.objectives import mtp_reward_loss

        valid = routed(batch["source"], self.agent_args.reward_loss_sources, batch["reward"].shape[1])
        reward = mtp_reward_loss(out.reward_logits.float(), batch["reward"].float(), valid, unwrapped.reward_bins(),
                                 first_offset_weight=self.agent_args.mtp_first_offset_weight)
        logs = {"twohot_clamped": reward.num_clamped}
        logs.update({f"reward_loss/offset_{n}": v for n, v in enumerate(offset_values(reward))})
        return reward.loss, reward.per_offset_count.sum(), logs

    def behaviour_cloning_loss(self, out: Any, batch: dict[str, Any], unwrapped: nn.Module
                               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """MTP behaviour cloning on labelled frames of routed examples: the joint NLL of the factorised policy."""
        from training.objectives import mtp_policy_loss

        space = self.model_config.policy_space
        valid = batch["has_action"] & routed(batch["source"], self.agent_args.bc_loss_sources, batch["has_action"].shape[1])
        actions = {name: batch[name] for name in space}
        if not hasattr(self, "_positive_weights"):
            self._positive_weights = self.positive_weights()
        policy = mtp_policy_loss({k: v.float() for k, v in out.policy_logits.items()}, actions, valid, space,
                                 first_offset_weight=self.agent_args.mtp_first_offset_weight,
                                 positive_weights=self._positive_weights)
        logs = {f"bc_loss/offset_{n}": v for n, v in enumerate(offset_values(policy))}
        return policy.loss, policy.per_offset_count.sum(), logs

    # ---- evaluation ----

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, seed: int) -> Evaluation:
        """Dynamics as in phase 1; heads on frames observed at `context_signal_level` (`agent_metrics`: reward
        events and binary keys by AUC and average precision, categorical components by top-1 and balanced
        accuracy, per MTP offset); with `probe_baseline`, the same offset-0 metrics of linear probes on the
        current and previous latents (`training.probe_baseline`)."""
        from training.probe_baseline import ProbeBaseline, probe_pool, reward_auc_over_draws

        config = self.model_config
        pool = probe_pool(config.latent_channels, config.latent_height, config.latent_width)
        with_probe = self.agent_args.probe_baseline and self.probe_windows is not None
        records = []
        for batch, generator in self.eval_batches(loader, accelerator, seed):
            records.append({**self.evaluate_batch(model, batch, generator),
                            **head_predictions(model, batch, generator, config, probe_pool=pool if with_probe else None)})
        arrays = gather_records(records, accelerator)
        metrics = {"dynamics_loss": float(arrays["dynamics_loss"].mean()), **agent_metrics(arrays, config.policy_space)}
        if "continue_prob" in arrays:
            ends = arrays["terminated_true"]
            metrics["continuation_auc"] = roc_auc(1 - arrays["continue_prob"], ends, np.ones_like(ends, dtype=bool))
        if "state_pred" in arrays:
            known = arrays["state_mask"]
            for i, name in enumerate(config.state_names):
                error = (arrays["state_pred"][..., i] - arrays["state_true"][..., i]) ** 2
                metrics[f"state_mse/{name}"] = masked_mean(error, known[..., i])
                metrics[f"state_r2/{name}"] = r_squared(arrays["state_pred"][..., i], arrays["state_true"][..., i],
                                                        known[..., i])
        if with_probe:
            if self.probes is None:  # the probes do not change during training: fitted once per run
                self.probes = ProbeBaseline.fit(self.probe_windows, config.policy_space, config.context_tau, pool,
                                                self.agent_args.probe_max_windows, seed)
            metrics.update(probe_metrics(self.probes, arrays, config.policy_space))
            over_draws = reward_auc_over_draws(self.probes.reward, arrays["probe_clean_latents"],
                                               arrays["reward_true"][..., 0], arrays["reward_mask"][..., 0],
                                               config.context_tau, pool, PROBE_NOISE_DRAWS, seed)
            metrics["probe/reward_auc_draws_mean"] = float(np.mean(over_draws))
            metrics["probe/reward_auc_draws_std"] = float(np.std(over_draws))
        return Evaluation(metrics, arrays)

@torch.no_grad()
def head_predictions(model: nn.Module, batch: dict[str, Any], generator: torch.Generator, config: Any,
                     prior: bool = False, probe_pool: int | None = None) -> dict[str, torch.Tensor]:
    """The heads on real frames, observed as at inference (at the config's context signal level, the finest
    step): per MTP offset, the reward head's decoded reward and event probabilities against the true reward,
    and each action component's most likely value (`distributions.policy_sample`, greedy; binary components
    also their probability) against the labelled one. `prior`: also the prior policy's. Arrays
    `(B, T, L + 1)`, keyed for `agent_metrics`. `probe_pool`: also the observed latents, pooled by that
    factor, for the probe baseline (`probe_latents`, `(B, T, C, H / pool, W / pool)`), and the clean latents
    pooled alike (`probe_clean_latents`, for the probe's AUC over other noise draws)."""
    from modeling_dreamer.distributions import policy_sample
    from modeling_dreamer.distributions import twohot_decode
    from training.objectives import add_noise, mtp_targets, twohot_out_of_range
    from training.probe_baseline import pooled_latents

    z_clean = batch["latents"].float()
    b, t = z_clean.shape[:2]
    level = torch.full((b, t), config.context_tau, device=z_clean.device)
    observed = add_noise(z_clean, level, torch.randn(z_clean.shape, generator=generator, device=generator.device))
    from training.stages.dynamics import state_inputs

    actions = {name: batch[name] for name in config.action_space}
    out = model(observed, level, torch.full_like(level, 1.0 / config.k_max), actions=actions, action_mask=batch["has_action"],
                **state_inputs(batch))
    bins = twohot_bins_of(model, config)
    everything = torch.ones(b, t, dtype=torch.bool, device=z_clean.device)
    reward_true, reward_mask = mtp_targets(batch["reward"].float(), everything, config.mtp_length)
    record = {
        "reward_pred": twohot_decode(out.reward_logits.float(), bins),
        **reward_event_probabilities(out.reward_logits.float(), bins),
        "reward_true": reward_true,
        "reward_mask": reward_mask,
        "reward_clamped": twohot_out_of_range(reward_true, bins) & reward_mask,
    }
    if probe_pool is not None:
        record["probe_latents"] = pooled_latents(observed, probe_pool)
        record["probe_clean_latents"] = pooled_latents(z_clean, probe_pool)
    if out.continue_logits is not None:
        record["continue_prob"] = torch.sigmoid(out.continue_logits.float())
        record["terminated_true"] = batch["terminated"].bool()
    if out.state_pred is not None:
        record.update(state_pred=out.state_pred.float(), state_true=batch["state"].float(),
                      state_mask=batch["state_mask"].bool())
    space = config.policy_space
    for name, spec in space.items():
        if spec["type"] == "binary":
            record[f"action_prob/{name}"] = torch.sigmoid(out.policy_logits[name].float()[..., 0])
    policies = {"action_pred": out.policy_logits}
    if prior:
        policies["prior_action_pred"] = out.prior_policy_logits
    for key, logits in policies.items():
        modes = policy_sample({k: v.float() for k, v in logits.items()}, space, greedy=True)
        record.update({f"{key}/{name}": mode.long() for name, mode in modes.items()})
    for name in space:
        target, mask = mtp_targets(batch[name].long(), batch["has_action"], config.mtp_length)
        record[f"action_true/{name}"] = target
        record[f"action_mask/{name}"] = mask
    return record


def press_rates(windows: Any) -> dict[str, float]:
    """Each binary policy component's press rate over the labelled frames of the training windows' rows."""
    space = {name: spec for name, spec in windows.schema.action_space.items()
             if spec["type"] == "binary" and spec.get("role", "both") != "input"}
    labelled = windows.has_action
    return {name: float(windows.actions[name][labelled].mean()) if labelled.any() else 0.0 for name in space}


def reward_event_probabilities(logits: torch.Tensor, bins: torch.Tensor) -> dict[str, torch.Tensor]:
    """Event scores of a twohot reward distribution, `logits (..., K)` -> three `(...)` tensors.

    `reward_event_prob`: P(r != 0), the mass off the bins that encode a reward of 0 (0 falls between two bins,
    or on one); `reward_positive_prob` / `reward_negative_prob`: the mass above / below them. These, not the
    decoded expectation, are the event detectors: a 1% chance of a -10 death moves the expectation more than
    a 15% chance of a +0.2 gold event.
    """
    from modeling_dreamer.distributions import twohot_encode

    probs = torch.softmax(logits, dim=-1)
    zero = twohot_encode(torch.zeros((), device=bins.device), bins) > 0
    above, below = (bins > 0) & ~zero, (bins < 0) & ~zero
    return {
        "reward_event_prob": 1.0 - probs[..., zero].sum(-1),
        "reward_positive_prob": probs[..., above].sum(-1),
        "reward_negative_prob": probs[..., below].sum(-1),
    }


def twohot_bins_of(model: nn.Module, config: Any) -> torch.Tensor:
    """The reward head's bin centres on the model's device."""
    from modeling_dreamer.distributions import twohot_bins

    device = next(model.parameters()).device
    return twohot_bins(config.num_bins, config.bins_low, config.bins_high).to(device)


def offset_values(result: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-offset losses for the log, each with whether the offset had a valid target (`LogWindow` counts it
    only then)."""
    return [(loss, count > 0) for loss, count in zip(result.per_offset_loss, result.per_offset_count)]


def agent_metrics(arrays: dict[str, np.ndarray], action_space: dict[str, Any]) -> dict[str, float]:
    """Reward and behaviour-cloning metrics from gathered evaluation arrays (`head_predictions`).

    Per MTP offset n (`.../offset_<n>`; the unsuffixed name is offset 0):
    - reward: `reward_auc`, `reward_ap` (ROC AUC and average precision of P(r != 0) for "the reward at t + n
      is nonzero"), `reward_auc_decoded` (AUC of |E[r]|, a poor event score kept for comparison),
      `reward_mae`; offset 0 only: `reward_auc_positive` / `reward_auc_negative` (P(r > 0) for gains, P(r < 0)
      for penalties), `reward_event_rate` (the average precision of a random score);
    - every component: `bc_top1` and, offset 0, `bc_majority` (always predicting the commonest label);
    - binary components: `bc_auc`, `bc_ap` of the press probability, `bc_ece` (its expected calibration error:
      `metrics.calibration_error`), `bc_press_rate` (offset 0);
    - categorical components: `bc_balanced_accuracy` (mean recall over the classes present).
    Undefined values (a key never pressed in the evaluation data) are NaN.
    """
    metrics: dict[str, float] = {}
    pred, true, mask = arrays["reward_pred"], arrays["reward_true"], arrays["reward_mask"]
    event = true != 0
    for n in range(pred.shape[-1]):
        m = mask[..., n]
        metrics[f"reward_mae/offset_{n}"] = masked_mean(np.abs(pred[..., n] - true[..., n]), m)
        metrics[f"reward_auc/offset_{n}"] = roc_auc(arrays["reward_event_prob"][..., n], event[..., n], m)
        metrics[f"reward_ap/offset_{n}"] = average_precision(arrays["reward_event_prob"][..., n], event[..., n], m)
        metrics[f"reward_auc_decoded/offset_{n}"] = roc_auc(np.abs(pred[..., n]), event[..., n], m)
    for key in ("reward_auc", "reward_ap", "reward_auc_decoded", "reward_mae"):
        metrics[key] = metrics[f"{key}/offset_0"]
    m0 = mask[..., 0]
    metrics["reward_auc_positive"] = roc_auc(arrays["reward_positive_prob"][..., 0], true[..., 0] > 0, m0)
    metrics["reward_auc_negative"] = roc_auc(arrays["reward_negative_prob"][..., 0], true[..., 0] < 0, m0)
    metrics["reward_event_rate"] = masked_mean(event[..., 0], m0)
    metrics["twohot_clamped_share"] = float(arrays["reward_clamped"].sum() / max(1, mask.sum()))
    for name, spec in action_space.items():
        pred_a, true_a, mask_a = arrays[f"action_pred/{name}"], arrays[f"action_true/{name}"], arrays[f"action_mask/{name}"]
        binary = spec["type"] == "binary"
        for n in range(pred_a.shape[-1]):
            m = mask_a[..., n]
            metrics[f"bc_top1/{name}/offset_{n}"] = masked_mean(pred_a[..., n] == true_a[..., n], m)
            if binary:
                prob, pressed = arrays[f"action_prob/{name}"][..., n], true_a[..., n] != 0
                metrics[f"bc_auc/{name}/offset_{n}"] = roc_auc(prob, pressed, m)
                metrics[f"bc_ap/{name}/offset_{n}"] = average_precision(prob, pressed, m)
                metrics[f"bc_ece/{name}/offset_{n}"] = calibration_error(prob, pressed, m)
            else:
                metrics[f"bc_balanced_accuracy/{name}/offset_{n}"] = balanced_accuracy(pred_a[..., n], true_a[..., n], m)
        for key in ("bc_top1", "bc_auc", "bc_ap", "bc_ece", "bc_balanced_accuracy"):
            if f"{key}/{name}/offset_0" in metrics:
                metrics[f"{key}/{name}"] = metrics[f"{key}/{name}/offset_0"]
        metrics[f"bc_majority/{name}"] = majority_rate(true_a[..., 0], mask_a[..., 0])
        if binary:
            metrics[f"bc_press_rate/{name}"] = masked_mean(true_a[..., 0] != 0, mask_a[..., 0])
    return metrics


def probe_metrics(probes: Any, arrays: dict[str, np.ndarray], action_space: dict[str, Any]) -> dict[str, float]:
    """The probe baseline's offset-0 metrics on the evaluated frames (`eval/probe/...`)."""
    from training.probe_baseline import frame_pair_rows

    features = frame_pair_rows(arrays["probe_latents"])
    actions = {name: (arrays[f"action_true/{name}"][..., 0].reshape(-1), arrays[f"action_mask/{name}"][..., 0].reshape(-1))
               for name in action_space}
    return probes.metrics(features, arrays["reward_true"][..., 0].reshape(-1), arrays["reward_mask"][..., 0].reshape(-1),
                          actions, action_space)
