"""Stage `imagination` (DreamerV4 phase 3): improve the policy inside the world model.

Starts from a phase-2 agent (`--init_from`). Only the policy head and the value head train; the transformer,
the agent tokens and the reward head are frozen, and a frozen copy of the phase-2 policy head is kept as the
behavioural prior (`prior_policy_head`, saved with the model). Per micro-batch:

1. the windows drawn by the mixture sampler are committed as context with their true actions, and one
   rollout of `imagination_horizon` frames is imagined from each, with actions sampled from the current
   policy and the K-step shortcut sampler, without gradient (`DreamerAgentModel.imagine`);
2. lambda-returns of the imagined rewards, bootstrapped from the value at the horizon
   (`objectives.lambda_returns`; indexing in `ImaginationOutput`);
3. `policy`: PMPO on the rollout's states and actions, with the reverse KL to the prior
   (`objectives.pmpo_loss`); `value`: twohot cross entropy against the stopped returns (`objectives.value_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modeling_dreamer.errors import ArgumentError, RunError
from training.metrics import masked_mean
from training.optim import GroupScales
from training.stages.agent import head_predictions
from training.stages.base import Evaluation, Stage, StepLosses, load_source_config, model_kwargs, saved_architecture
from training.stages.dynamics import gather_records, state_inputs


@dataclass
class ImaginationArguments:
    """Knobs of imagination training (the paper's values where it gives them)."""

    imagination_horizon: int = field(default=16, metadata={"help": "Imagined frames per rollout."})
    imagination_num_steps: int = field(default=4, metadata={"help": "Shortcut sampler steps per imagined frame (K)."})
    imagination_context: int | None = field(
        default=None, metadata={"help": "Context frames committed before a rollout (the last ones of the window); "
                                "None: the whole window."})
    discount: float = field(default=0.997, metadata={"help": "gamma of the lambda-returns."})
    return_lambda: float = field(default=0.95, metadata={"help": "lambda of the lambda-returns."})
    pmpo_alpha: float = field(default=0.5, metadata={"help": "PMPO weight of the positive set (1 - alpha: negative)."})
    pmpo_beta: float = field(default=0.3, metadata={"help": "PMPO weight of the reverse KL to the behavioural prior."})
    value_bins_low: float | None = field(
        default=None, metadata={"help": "Value twohot range low end (symlog space). None: from the data's rewards "
                                "and the discount (docs/training.md)."})
    value_bins_high: float | None = field(default=None, metadata={"help": "Value twohot range high end (symlog space)."})

    def __post_init__(self) -> None:
        if self.imagination_horizon < 1 or self.imagination_num_steps < 1:
            raise ArgumentError("imagination_horizon and imagination_num_steps must be >= 1")
        if not 0.0 < self.discount <= 1.0 or not 0.0 <= self.return_lambda <= 1.0:
            raise ArgumentError(f"discount must be in (0, 1] and return_lambda in [0, 1], got {self.discount}, "
                             f"{self.return_lambda}")
        if self.imagination_context is not None and self.imagination_context < 1:
            raise ArgumentError(f"imagination_context must be >= 1 (context frames before a rollout) or None (the whole "
                             f"window), got {self.imagination_context}")
        if not 0.0 <= self.pmpo_alpha <= 1.0 or self.pmpo_beta < 0:
            raise ArgumentError(f"pmpo_alpha must be in [0, 1] and pmpo_beta >= 0, got {self.pmpo_alpha}, {self.pmpo_beta}")


def return_range(reward_min: float, reward_max: float, discount: float) -> tuple[float, float]:
    """A value twohot range (symlog space) that holds every return: the largest reward magnitude of either
    sign earned on every frame forever, `r / (1 - gamma)`, padded by 10% (at least 0.5). Symmetric, so the
    zero-initialised value head starts at a value of exactly 0 (the decoded mean of symmetric bins)."""
    from modeling_dreamer.symlog import symlog

    horizon = 1.0 / (1.0 - discount) if discount < 1 else 1e4
    largest = float(symlog(max(abs(reward_min), abs(reward_max)) * horizon))
    bound = round(largest + max(0.1 * largest, 0.5), 1)
    return -bound, bound


class ImaginationStage(Stage):
    name = "imagination"
    description = "DreamerV4 phase 3: imagination training (PMPO policy and TD(lambda) value on world-model rollouts)"
    loss_terms = ("policy", "value")
    # The paper normalises phase 3's terms by nothing: PMPO's are in nats and scale-free, and near the prior its
    # value is close to zero with either sign, so dividing by its running RMS would inflate the policy gradient
    # many times (measured in docs/objectives.md).
    unnormalized_terms = ("policy", "value")
    arguments_classes = (ImaginationArguments,)

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.imagination_args = args.of(ImaginationArguments)
        context, window = self.imagination_args.imagination_context, args.data.window_length
        if context is not None and context > window:
            raise RunError(f"imagination_context {context} is longer than window_length {window}: the context frames "
                           "are the last ones of a training window")

    # ---- model ----

    def build_model(self, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        from modeling_dreamer import DreamerAgentModel

        init_from = self.args.model.init_from
        if self.args.model.time_context_length is not None:
            raise RunError("--time_context_length does not apply to stage imagination: the world model is frozen and "
                           "keeps the context it was trained with")
        if init_from is None:
            raise RunError("stage imagination needs --init_from: a phase-2 agent (a DreamerAgentModel final/ folder)")
        source = load_source_config(init_from, schema)
        if saved_architecture(source) != "DreamerAgentModel":
            raise RunError(f"--init_from {init_from}: holds a {saved_architecture(source)}; stage imagination "
                           "improves a phase-2 agent (a DreamerAgentModel)")
        a = self.imagination_args
        if source.use_behavior_prior:
            # Continue imagination training: the prior and the value head's range are the model's own.
            model = DreamerAgentModel.from_pretrained(init_from, **model_kwargs(self.args))
            origin = "imagination agent"
        else:
            low, high = return_range(schema.reward_min, schema.reward_max, a.discount)
            low = low if a.value_bins_low is None else a.value_bins_low
            high = high if a.value_bins_high is None else a.value_bins_high
            try:
                model = DreamerAgentModel.grow_from(
                    init_from, ("prior_policy_head",), use_behavior_prior=True, value_bins_low=low,
                    value_bins_high=high, **model_kwargs(self.args))
            except ValueError as error:
                raise RunError(f"--init_from {init_from}: {error}") from None
            # The behavioural prior: the phase-2 policy, frozen from here on.
            model.prior_policy_head.load_state_dict(model.policy_head.state_dict())
            origin = "phase-2 agent, policy copied as the prior"
        self.model_config = model.config
        return model, {"init": origin, "init_from": init_from}

    def configure_trainable(self, model: nn.Module) -> None:
        """Only the policy and value heads train."""
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(("policy_head.", "value_head.")))

    def lr_scales(self) -> GroupScales:
        return GroupScales()

    def clip_groups(self) -> dict[str, tuple[str, ...]]:
        """The policy and the value head are clipped apart: they learn from separate losses."""
        return {"policy": ("policy_head.",), "value": ("value_head.",)}

    # ---- one micro-batch ----

    def rollout(self, unwrapped: nn.Module, batch: dict[str, Any], generator: torch.Generator, policy: Any = None):
        """One imagined rollout per window of the batch (no gradient)."""
        a = self.imagination_args
        latents = batch["latents"].float()
        context = latents.shape[1] if a.imagination_context is None else min(a.imagination_context, latents.shape[1])
        actions = {name: batch[name][:, -context:] for name in self.model_config.action_space}
        state = {f"context_{key}": value[:, -context:] for key, value in state_inputs(batch).items()}
        return unwrapped.imagine(latents[:, -context:], actions, a.imagination_horizon, a.imagination_num_steps,
                                 policy=policy, generator=generator, context_action_mask=batch["has_action"][:, -context:],
                                 **state)

    def compute_losses(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, unwrapped: nn.Module
    ) -> StepLosses:
        rollout = self.rollout(unwrapped, batch, generator)
        heads = model(agent_hidden=rollout.agent_hidden)  # through the (distributed) model: the heads' gradients
        policy_loss, policy_logs = self.policy_loss(heads, rollout, unwrapped)
        value, value_logs = self.value_loss(heads, rollout, unwrapped)
        count = torch.full((), float(rollout.rewards.numel()), device=rollout.rewards.device)  # no copy from the host
        return StepLosses({"policy": policy_loss, "value": value}, {"policy": count, "value": count},
                          {**policy_logs, **value_logs})

    def returns(self, rollout: Any) -> torch.Tensor:
        a = self.imagination_args
        return lambda_returns_of(rollout, a.discount, a.return_lambda)

    def policy_loss(self, heads: Any, rollout: Any, unwrapped: nn.Module) -> tuple[torch.Tensor, dict[str, Any]]:
        """PMPO on the imagined actions, advantages `R - v` (stopped), reverse KL to the prior."""
        from modeling_dreamer.distributions import component_entropy, policy_log_prob
        from training.objectives import pmpo_loss, pmpo_set_sizes, policy_kl

        space, a = self.model_config.policy_space, self.imagination_args
        horizon = rollout.rewards.shape[1]
        policy = {k: v[:, :horizon, 0] for k, v in heads.policy_logits.items()}
        prior = {k: v[:, :horizon, 0].detach() for k, v in heads.prior_policy_logits.items()}
        advantages = self.returns(rollout) - rollout.values[:, :horizon]
        log_probs = policy_log_prob(policy, rollout.actions, space)
        kl = policy_kl(policy, prior, space)
        set_sizes = self.reduce_sum(pmpo_set_sizes(advantages))  # PMPO's sets span every process's rollouts
        pmpo = pmpo_loss(log_probs, advantages, kl, alpha=a.pmpo_alpha, beta=a.pmpo_beta, set_sizes=set_sizes,
                         num_processes=self.num_processes)
        logs = {"positive_share": pmpo.positive_share, "kl_to_prior": pmpo.kl,
                "imagined_reward": rollout.rewards.sum(1).mean(), "advantage_abs": advantages.abs().mean()}
        for name, spec in space.items():
            logs[f"entropy/{name}"] = component_entropy(policy[name].detach(), spec, name).mean()
        return pmpo.loss, logs

    def value_loss(self, heads: Any, rollout: Any, unwrapped: nn.Module) -> tuple[torch.Tensor, dict[str, Any]]:
        """Twohot cross entropy of the value head against the stopped lambda-returns."""
        from training.objectives import value_loss

        horizon = rollout.rewards.shape[1]
        returns = self.returns(rollout)
        loss, clamped = value_loss(heads.value_logits[:, :horizon], returns, unwrapped.value_bins())
        return loss, {"value_clamped": clamped, "value_error": (rollout.values[:, :horizon] - returns).abs().mean(),
                      "return_mean": returns.mean()}

    # ---- evaluation ----

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, seed: int) -> Evaluation:
        """On held-out windows, from the same contexts and seeds: the imagined return of the policy and of the
        prior, the positive share, KL to the prior, entropy per component, value loss and error; and on the
        held-out frames themselves, behaviour-cloning top-1 of the policy and of the prior (how far the policy
        drifted from the data)."""
        from modeling_dreamer.distributions import component_entropy
        from training.objectives import policy_kl, value_loss

        unwrapped = accelerator.unwrap_model(model)
        space = self.model_config.policy_space

        def prior(hidden: torch.Tensor) -> dict[str, torch.Tensor]:
            return {name: logits[:, 0] for name, logits in unwrapped.prior_policy_head(hidden).items()}

        records = []
        for index, batch in enumerate(loader):
            make = lambda: torch.Generator(device=accelerator.device).manual_seed(seed + 1_000 * accelerator.process_index + index)  # noqa: E731
            ours, theirs = self.rollout(unwrapped, batch, make()), self.rollout(unwrapped, batch, make(), policy=prior)
            heads = unwrapped(agent_hidden=ours.agent_hidden)
            horizon = ours.rewards.shape[1]
            returns = self.returns(ours)
            policy = {k: v[:, :horizon, 0] for k, v in heads.policy_logits.items()}
            prior_logits = {k: v[:, :horizon, 0] for k, v in heads.prior_policy_logits.items()}
            b = ours.rewards.shape[0]
            record = {
                "imagined_return": ours.rewards.sum(1), "imagined_return_prior": theirs.rewards.sum(1),
                "positive_share": ((returns - ours.values[:, :horizon]) >= 0).float().mean(1),
                "kl_to_prior": policy_kl(policy, prior_logits, space).mean(1),
                "value_error": (ours.values[:, :horizon] - returns).abs().mean(1),
                "value_loss": value_loss(heads.value_logits[:, :horizon], returns, unwrapped.value_bins())[0].expand(b),
            }
            for name, spec in space.items():
                record[f"entropy/{name}"] = component_entropy(policy[name], spec, name).mean(1)
            imagined_keys = list(record)
            records.append({**record, **head_predictions(model, batch, make(), self.model_config, prior=True)})
        arrays = gather_records(records, accelerator)
        metrics = {key: float(arrays[key].mean()) for key in imagined_keys}
        metrics["imagined_return_gain"] = metrics["imagined_return"] - metrics["imagined_return_prior"]
        for name in space:
            mask = arrays[f"action_mask/{name}"][..., 0]
            truth = arrays[f"action_true/{name}"][..., 0]
            metrics[f"bc_top1/{name}"] = masked_mean(arrays[f"action_pred/{name}"][..., 0] == truth, mask)
            metrics[f"bc_top1_prior/{name}"] = masked_mean(arrays[f"prior_action_pred/{name}"][..., 0] == truth, mask)
        return Evaluation(metrics, arrays)


def lambda_returns_of(rollout: Any, discount: float, lam: float) -> torch.Tensor:
    from training.objectives import lambda_returns

    # With a continuation head, a return stops where the model predicts the episode ends (never at a truncation:
    # the head learned terminations only).
    return lambda_returns(rollout.rewards, rollout.values, rollout.continues, gamma=discount, lam=lam)
