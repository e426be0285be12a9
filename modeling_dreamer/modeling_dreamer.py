"""DreamerV4 dynamics transformer (:class:`DreamerModel`) and agent model (:class:`DreamerAgentModel`).

Token layout of one frame (``S`` slots), in this order:

    [ latent tokens (H/p * W/p) | registers (R) | noise token (1) | action token (1) | agent tokens (A) ]

The agent tokens exist only in :class:`DreamerAgentModel` and are always last, so the space
attention's firewall is "the last ``A`` slots". Conventions (tau, d, actions) follow
docs/architecture.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .action_space import num_choices
from .attention import (
    AUTO_ATTN_IMPLEMENTATION,
    DREAMER_ATTENTION_FUNCTIONS,
    check_attn_implementation,
    resolve_attn_implementation,
    time_attention_mask,
)
from .configuration_dreamer import DreamerConfig
from .distributions import twohot_bins
from .heads import DreamerPolicyHead, DreamerRewardHead, DreamerValueHead, DreamerZeroLinear
from .layers import DreamerBlock, DreamerRMSNorm, rotary_tables
from .validation import check_local_checkpoint, check_model_inputs


@dataclass
class DreamerModelOutput(ModelOutput):
    """``latent_pred (B, T, C, H, W)``: the x-prediction of the clean latents.
    ``agent_states (B, T, A, D)``: final hidden states of agent tokens, when they were given."""

    latent_pred: torch.Tensor | None = None
    agent_states: torch.Tensor | None = None


@dataclass
class DreamerAgentOutput(ModelOutput):
    """Outputs of :class:`DreamerAgentModel` (DESIGN.md section 6)."""

    latent_pred: torch.Tensor | None = None  # (B, T, C, H, W)
    agent_hidden: torch.Tensor | None = None  # (B, T, D)
    reward_logits: torch.Tensor | None = None  # (B, T, L + 1, num_bins)
    policy_logits: dict[str, torch.Tensor] | None = None  # name -> (B, T, L + 1, n)
    value_logits: torch.Tensor | None = None  # (B, T, num_bins)


class DreamerActionEmbedding(nn.Module):
    """One action token per frame: frame ``t`` embeds ``actions[t - 1]``.

    A labeled action is ``base + sum_c embedding_c(actions_c)``; frame 0, frames whose previous
    action is unlabeled and every frame of an independent-frame example get the learned
    ``no_action`` vector (an independent frame is a start frame).
    """

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.action_space = config.action_space
        self.components = nn.ModuleDict(
            {name: nn.Embedding(num_choices(spec), config.hidden_size) for name, spec in config.action_space.items()}
        )
        self.base = nn.Parameter(torch.zeros(config.hidden_size))
        self.no_action = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(
        self,
        actions: dict[str, torch.Tensor] | None,
        action_mask: torch.Tensor | None,
        independent_frames: torch.Tensor | None,
        batch: int,
        frames: int,
    ) -> torch.Tensor:
        """``actions {name: (B, T)}``, ``action_mask (B, T) bool`` -> action tokens ``(B, T, D)``."""
        no_action = self.no_action.expand(batch, frames, -1)
        if actions is None:
            return no_action
        labeled = (
            torch.ones(batch, frames, dtype=torch.bool, device=no_action.device)
            if action_mask is None
            else action_mask.to(device=no_action.device, dtype=torch.bool)
        )
        embedded = self.base.expand(batch, frames, -1)
        for name, table in self.components.items():
            value = actions[name].to(no_action.device)
            if self.action_space[name]["type"] == "binary":
                index = (value.float() >= 0.5).long()  # bool or 0/1 (checked); unlabeled entries: anything
            else:
                index = torch.where(labeled, value.long(), 0)  # unlabeled entries may hold anything
            embedded = embedded + table(index)
        # Shift by one frame: frame t sees the action taken at t - 1.
        previous = torch.cat([no_action[:, :1], embedded[:, :-1]], dim=1)
        previous_labeled = torch.cat([torch.zeros_like(labeled[:, :1]), labeled[:, :-1]], dim=1)
        if independent_frames is not None:
            previous_labeled = previous_labeled & ~independent_frames.to(previous_labeled.device)[:, None]
        return torch.where(previous_labeled[..., None], previous, no_action)


class DreamerFrameEmbeddings(nn.Module):
    """Inputs of one frame -> its non-agent tokens ``(B, T, N_z + R + 2, D)``."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        self.latent_proj = nn.Linear(config.latent_channels * p * p, config.hidden_size)
        self.registers = nn.Parameter(torch.zeros(config.num_register_tokens, config.hidden_size))
        self.signal_embed = nn.Embedding(config.k_max + 1, config.hidden_size // 2)
        self.step_embed = nn.Embedding(int(math.log2(config.k_max)) + 1, config.hidden_size // 2)
        self.actions = DreamerActionEmbedding(config)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> ``(B, T, H/p * W/p, C * p * p)``, patches in row-major order."""
        b, t, c, height, width = latents.shape
        p = self.config.patch_size
        x = latents.reshape(b, t, c, height // p, p, width // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, t, (height // p) * (width // p), c * p * p)

    def noise_indices(self, signal_level: torch.Tensor, step_size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """tau -> ``round(tau * K_max)`` in ``0..K_max``; d -> ``round(log2(1 / d))`` in ``0..log2(K_max)``.
        Values are checked to lie on these grids (``validation.check_model_inputs``) before."""
        k_max = self.config.k_max
        tau_index = torch.round(signal_level.float() * k_max).long()
        if step_size is None:
            step_index = torch.full_like(tau_index, int(math.log2(k_max)))
        else:
            step_index = torch.round(-torch.log2(step_size.float())).long()
        return tau_index, step_index

    def forward(
        self,
        latents: torch.Tensor,
        signal_level: torch.Tensor,
        step_size: torch.Tensor | None,
        actions: dict[str, torch.Tensor] | None,
        action_mask: torch.Tensor | None,
        independent_frames: torch.Tensor | None,
    ) -> torch.Tensor:
        b, t = latents.shape[:2]
        latent_tokens = self.latent_proj(self.patchify(latents))
        tau_index, step_index = self.noise_indices(signal_level, step_size)
        noise_token = torch.cat([self.signal_embed(tau_index), self.step_embed(step_index)], dim=-1)
        action_token = self.actions(actions, action_mask, independent_frames, b, t)
        registers = self.registers.expand(b, t, -1, -1)
        return torch.cat([latent_tokens, registers, noise_token[:, :, None], action_token[:, :, None]], dim=2)


class DreamerAgentTokens(nn.Module):
    """Agent token inputs: ``task_embed(task) + slot[i]`` for the ``A`` slots of each frame."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.task_embed = nn.Embedding(config.num_tasks, config.hidden_size)
        self.slots = nn.Parameter(torch.zeros(config.num_agent_tokens, config.hidden_size))

    def forward(self, task_ids: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor:
        """``task_ids (B,)`` or ``(B, T)`` long, None = task 0 -> ``(B, T, A, D)``."""
        device = self.slots.device
        if task_ids is None:
            task_ids = torch.zeros(batch, dtype=torch.long, device=device)
        task_ids = task_ids.to(device=device, dtype=torch.long)
        if task_ids.dim() == 1:
            task_ids = task_ids[:, None].expand(batch, frames)
        return self.task_embed(task_ids)[:, :, None, :] + self.slots


class DreamerPreTrainedModel(PreTrainedModel):
    config_class = DreamerConfig
    base_model_prefix = "dreamer"
    main_input_name = "latents"
    supports_gradient_checkpointing = True
    # Also the default FSDP wrap classes (Accelerate's transformer-based wrap policy reads it).
    _no_split_modules = ["DreamerBlock"]
    _supports_sdpa = True
    _supports_flex_attn = True
    # Training role of each top-level child module; the parameters of any other module are the
    # "backbone" (the dynamics transformer). The optimiser's learning-rate groups and
    # `DreamerAgentModel.from_backbone` (which modules a backbone checkpoint lacks) read it.
    module_roles: dict[str, str] = {}

    @classmethod
    def parameter_role(cls, name: str) -> str:
        """``"backbone"``, ``"agent"`` or ``"heads"`` for a parameter name of this model."""
        return cls.module_roles.get(name.split(".", 1)[0], "backbone")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, after checking a local checkpoint folder: a missing
        folder, a missing ``config.json`` or a truncated ``model.safetensors`` raise an ``OSError``
        naming the folder and the file (``validation.check_local_checkpoint``)."""
        if pretrained_model_name_or_path is not None:
            check_local_checkpoint(
                pretrained_model_name_or_path,
                subfolder=kwargs.get("subfolder") or "",
                need_config=kwargs.get("config") is None,
                who=f"{cls.__name__}.from_pretrained",
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' hook that validates ``attn_implementation``: None (not asked for) becomes
        ``"auto"`` (chosen per device at run time, ``attention.resolve_attn_implementation``); the
        project's own names are accepted; an implementation that cannot apply the configured logit
        soft cap is refused here, when the model is built."""
        if requested_attention in (None, AUTO_ATTN_IMPLEMENTATION):
            return AUTO_ATTN_IMPLEMENTATION
        check_attn_implementation(requested_attention, self.config.attn_logit_softcapping)
        if requested_attention in DREAMER_ATTENTION_FUNCTIONS:
            return requested_attention
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear / Embedding: N(0, initializer_range), biases 0, RMSNorm gains 1 (base class); the
        custom parameters below likewise; reward and value output layers are zero (docs/model.md).

        Only ``transformers.initialization`` functions: they skip tensors loaded from a checkpoint.
        """
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DreamerFrameEmbeddings):
            init.normal_(module.registers, std=std)
        elif isinstance(module, DreamerActionEmbedding):
            init.normal_(module.base, std=std)
            init.normal_(module.no_action, std=std)
        elif isinstance(module, DreamerAgentTokens):
            init.normal_(module.slots, std=std)
        elif isinstance(module, DreamerZeroLinear):  # after the base class's normal init of any Linear
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class DreamerModel(DreamerPreTrainedModel):
    """The dynamics transformer: noisy latents, signal levels, step sizes and actions -> clean latents."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__(config)
        self.embeddings = DreamerFrameEmbeddings(config)
        self.layers = nn.ModuleList([DreamerBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        p = config.patch_size
        self.latent_out = nn.Linear(config.hidden_size, config.latent_channels * p * p)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The module that turns a frame's inputs into tokens (Accelerate's FSDP2 preparation shards
        it as its own unit). There is no vocabulary: it is not an ``nn.Embedding``."""
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings = value

    def validate_inputs(
        self,
        latents: torch.Tensor,
        signal_level: torch.Tensor,
        step_size: torch.Tensor | None = None,
        actions: dict[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        independent_frames: torch.Tensor | None = None,
        agent_tokens: torch.Tensor | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the argument (and action component) of an invalid input; what
        is checked where: ``validation.check_model_inputs``. ``forward`` calls it first."""
        check_model_inputs(
            self.config, latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames,
            agent_tokens, synchronous=synchronous, where=type(self).__name__,
        )

    def forward(
        self,
        latents: torch.Tensor,
        signal_level: torch.Tensor,
        step_size: torch.Tensor | None = None,
        actions: dict[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        independent_frames: torch.Tensor | None = None,
        agent_tokens: torch.Tensor | None = None,
        skip_input_checks: bool = False,
    ) -> DreamerModelOutput:
        """Predict clean latents.

        Args:
            latents: ``(B, T, C, H, W)`` noisy latents (cast to the model's dtype).
            signal_level: ``(B, T)`` tau in [0, 1] on the grid ``k / K_max``, 1 = clean.
            step_size: ``(B, T)`` d in {1, 1/2, ..., 1/K_max}; None = ``1 / K_max``.
            actions: ``{name: (B, T)}``; ``actions[t]`` is taken at frame t and enters frame t + 1.
            action_mask: ``(B, T)`` bool, True where ``actions[t]`` is labeled (None: all labeled).
            task_ids: accepted for a call signature shared with :class:`DreamerAgentModel`; only
                checked here.
            independent_frames: ``(B,)`` bool; flagged examples' frames see nothing of each other.
            agent_tokens: ``(B, T, A, D)`` extra tokens appended to every frame behind the agent
                firewall (used by :class:`DreamerAgentModel`).
            skip_input_checks: True when the caller already ran :meth:`validate_inputs`.
        Returns:
            :class:`DreamerModelOutput` with ``latent_pred (B, T, C, H, W)`` and, if agent tokens
            were given, their final states ``agent_states (B, T, A, D)`` (before any norm).
        """
        if not skip_input_checks:
            self.validate_inputs(
                latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames, agent_tokens
            )
        b, t = latents.shape[:2]
        latents = latents.to(self.dtype)
        if independent_frames is not None:
            independent_frames = independent_frames.to(device=latents.device, dtype=torch.bool)
        hidden = self.embeddings(latents, signal_level, step_size, actions, action_mask, independent_frames)
        num_agent = 0 if agent_tokens is None else agent_tokens.shape[2]
        if num_agent:
            hidden = torch.cat([hidden, agent_tokens.to(hidden.dtype)], dim=2)
        c = self.config
        space_rope = rotary_tables(hidden.shape[2], c.head_dim, c.rope_theta, hidden.device)
        time_rope = rotary_tables(t, c.head_dim, c.rope_theta, hidden.device)
        implementation = resolve_attn_implementation(c._attn_implementation, hidden.device, c.attn_logit_softcapping)
        time_mask = time_attention_mask(implementation, t, t, hidden.device)
        for layer in self.layers:
            hidden = layer(
                hidden,
                space_position_embeddings=space_rope,
                time_position_embeddings=time_rope,
                time_attention_mask=time_mask,
                num_agent_tokens=num_agent,
                independent_frames=independent_frames,
            )
        latent_tokens = self.latent_out(self.norm(hidden[:, :, : c.num_latent_tokens]))
        return DreamerModelOutput(
            latent_pred=self._unpatchify(latent_tokens),
            agent_states=hidden[:, :, hidden.shape[2] - num_agent :] if num_agent else None,
        )

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, H/p * W/p, C * p * p)`` -> ``(B, T, C, H, W)``; inverse of ``patchify``."""
        c, p = self.config, self.config.patch_size
        b, t = tokens.shape[:2]
        h, w = c.latent_height // p, c.latent_width // p
        x = tokens.reshape(b, t, h, w, c.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, t, c.latent_channels, c.latent_height, c.latent_width)


class DreamerAgentModel(DreamerPreTrainedModel):
    """The dynamics backbone plus agent tokens and the reward, policy and value heads (phase 2/3)."""

    module_roles = {
        "agent_tokens": "agent",
        "agent_norm": "agent",
        "reward_head": "heads",
        "policy_head": "heads",
        "value_head": "heads",
    }

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__(config)
        self.dreamer = DreamerModel(config)
        self.agent_tokens = DreamerAgentTokens(config)
        self.agent_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.reward_head = DreamerRewardHead(config)
        self.policy_head = DreamerPolicyHead(config)
        self.value_head = DreamerValueHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's frame embeddings (see :meth:`DreamerModel.get_input_embeddings`)."""
        return self.dreamer.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.dreamer.embeddings = value

    def validate_inputs(
        self,
        latents: torch.Tensor,
        signal_level: torch.Tensor,
        step_size: torch.Tensor | None = None,
        actions: dict[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        independent_frames: torch.Tensor | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """As :meth:`DreamerModel.validate_inputs`; ``forward`` calls it first."""
        check_model_inputs(
            self.config, latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames,
            synchronous=synchronous, where=type(self).__name__,
        )

    def forward(
        self,
        latents: torch.Tensor,
        signal_level: torch.Tensor,
        step_size: torch.Tensor | None = None,
        actions: dict[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        independent_frames: torch.Tensor | None = None,
    ) -> DreamerAgentOutput:
        """Arguments as :meth:`DreamerModel.forward`; ``task_ids (B,)`` or ``(B, T)``, None = task 0.

        ``agent_hidden`` is the mean over the frame's agent tokens of their RMS-normalised final states.
        """
        self.validate_inputs(latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames)
        b, t = latents.shape[:2]
        agent_inputs = self.agent_tokens(task_ids, b, t)
        out = self.dreamer(
            latents,
            signal_level,
            step_size=step_size,
            actions=actions,
            action_mask=action_mask,
            independent_frames=independent_frames,
            agent_tokens=agent_inputs,
            skip_input_checks=True,
        )
        agent_hidden = self.agent_norm(out.agent_states).mean(dim=2)
        return DreamerAgentOutput(
            latent_pred=out.latent_pred,
            agent_hidden=agent_hidden,
            reward_logits=self.reward_head(agent_hidden),
            policy_logits=self.policy_head(agent_hidden),
            value_logits=self.value_head(agent_hidden),
        )

    def reward_bins(self) -> torch.Tensor:
        """Twohot bin centres in symlog space, ``(num_bins,)`` float32 on the model's device."""
        c = self.config
        return twohot_bins(c.num_bins, c.bins_low, c.bins_high).to(self.device)

    @classmethod
    def from_backbone(cls, pretrained_model_name_or_path: str, **kwargs) -> "DreamerAgentModel":
        """Grow a :class:`DreamerModel` checkpoint into an agent model, and check the loading report.

        ``kwargs`` go to ``from_pretrained``: config fields the backbone does not use
        (``num_tasks``, ``num_agent_tokens``, ``mtp_length``, ``num_bins``, ``bins_low``,
        ``bins_high``, ``head_hidden_size``, ``head_layers``) may be overridden there. Raises
        ``ValueError`` if any weight outside the agent modules is missing, or if any checkpoint weight
        is unexpected or of the wrong shape (a changed backbone field, e.g. the action space).
        """
        model, info = cls.from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        missing = [k for k in info["missing_keys"] if cls.parameter_role(k) == "backbone"]
        problems = {
            "missing backbone weights": missing,
            "unexpected weights": list(info["unexpected_keys"]),
            "mismatched shapes": [str(m) for m in info["mismatched_keys"]],
            "errors": list(info.get("error_msgs", [])),
        }
        problems = {name: keys for name, keys in problems.items() if keys}
        if problems:
            raise ValueError(f"DreamerAgentModel.from_backbone({pretrained_model_name_or_path!r}): {problems}")
        return model
