"""DreamerV4 dynamics transformer (:class:`DreamerModel`) and agent model (:class:`DreamerAgentModel`).

Token layout of one frame (``S`` slots), in this order:

    [ latent tokens (H/p * W/p) | registers (R) | noise token (1) | action token (1) | state token (0 or 1) |
      agent tokens (A) ]

The agent tokens exist only in :class:`DreamerAgentModel` and are always last, so the space
attention's firewall is "the last ``A`` slots". Conventions (tau, d, actions) follow
docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .action_space import num_choices
from .cache import DreamerCache
from .configuration_dreamer import DreamerConfig
from .distributions import policy_log_prob, policy_sample, twohot_bins, twohot_decode
from .heads import (
    DreamerContinueHead,
    DreamerPolicyHead,
    DreamerRewardHead,
    DreamerStateHead,
    DreamerValueHead,
    DreamerZeroLinear,
)
from .layers import DreamerBlock, DreamerRMSNorm, run_blocks
from .pretrained import DreamerPreTrainedMixin
from .validation import (
    check_generator,
    check_model_inputs,
    check_policy_logits,
    check_positive_int,
    check_temperature,
    check_tensor,
)


@dataclass
class DreamerModelOutput(ModelOutput):
    """``latent_pred (B, T, C, H, W)``: the x-prediction of the clean latents.
    ``agent_states (B, T, A, D)``: final hidden states of agent tokens, when they were given.
    ``cache`` (also readable as ``past_key_values``): the :class:`DreamerCache` the call read or filled
    (None without one)."""

    latent_pred: torch.Tensor | None = None
    agent_states: torch.Tensor | None = None
    cache: DreamerCache | None = None

    @property
    def past_key_values(self) -> DreamerCache | None:
        # transformers >= 5.2x names output caches `cache` (and renames a `past_key_values` field to it);
        # this keeps the name the forward arguments use, on every transformers version.
        return self.cache


@dataclass
class DreamerAgentOutput(ModelOutput):
    """Outputs of :class:`DreamerAgentModel` (docs/architecture.md)."""

    latent_pred: torch.Tensor | None = None  # (B, T, C, H, W)
    agent_hidden: torch.Tensor | None = None  # (B, T, D)
    reward_logits: torch.Tensor | None = None  # (B, T, L + 1, num_bins)
    policy_logits: dict[str, torch.Tensor] | None = None  # name -> (B, T, L + 1, n)
    value_logits: torch.Tensor | None = None  # (B, T, num_bins)
    prior_policy_logits: dict[str, torch.Tensor] | None = None  # as policy_logits; with config.use_behavior_prior
    continue_logits: torch.Tensor | None = None  # (B, T): the episode goes on after frame t; config.continuation_head
    state_pred: torch.Tensor | None = None  # (B, T, state_size): the frame's state read back; config.predict_state
    cache: DreamerCache | None = None  # also readable as `past_key_values`

    @property
    def past_key_values(self) -> DreamerCache | None:
        return self.cache


@dataclass
class ImaginationOutput(ModelOutput):
    """A batch of imagined rollouts (:meth:`DreamerAgentModel.imagine`), ``N`` = horizon.

    Indexing: ``values[:, 0]`` is read at the last context frame; ``actions[:, i]`` is sampled at the frame
    before it (the last context frame for ``i = 0``, else generated frame ``i - 1``); ``latents[:, i]``,
    ``rewards[:, i]`` and ``values[:, i + 1]`` belong to the frame generated after ``actions[:, i]``.
    ``agent_hidden[:, i]`` is the agent state at which ``actions[:, i]`` was chosen (``i < N``) and
    ``agent_hidden[:, N]`` that of the last generated frame. ``continues[:, i]`` (with a continuation head) is the
    probability that the episode goes on after generated frame ``i``.
    """

    latents: torch.Tensor | None = None  # (B, N, C, H, W)
    actions: dict[str, torch.Tensor] | None = None  # name -> (B, N)
    log_probs: torch.Tensor | None = None  # (B, N) joint log-probability of actions[:, i] under the policy
    rewards: torch.Tensor | None = None  # (B, N) decoded reward head, offset 0
    values: torch.Tensor | None = None  # (B, N + 1) decoded value head
    agent_hidden: torch.Tensor | None = None  # (B, N + 1, D)
    continues: torch.Tensor | None = None  # (B, N) P(the episode goes on after generated frame i); config.continuation_head


# Frames (over the whole batch) that `DreamerAgentModel.commit_frames` feeds per forward pass. Activation memory
# grows with the frames of a pass (the space attention's logits dominate: about 5.7 MB per frame at the tiny
# preset on 32 x 16 x 16 latents), so a long context is committed in chunks of this many frames.
COMMIT_FRAMES_PER_PASS = 256


def _concat_frames(pieces: list[DreamerAgentOutput]) -> DreamerAgentOutput:
    """Outputs of consecutive chunks of frames -> the outputs of all of them (fields concatenated along T)."""
    def cat(values: list):
        if values[0] is None:
            return None
        if isinstance(values[0], dict):
            return {name: torch.cat([v[name] for v in values], dim=1) for name in values[0]}
        return torch.cat(values, dim=1)

    fields = ("latent_pred", "agent_hidden", "reward_logits", "policy_logits", "value_logits", "prior_policy_logits",
              "continue_logits", "state_pred")
    return DreamerAgentOutput(**{name: cat([getattr(p, name) for p in pieces]) for name in fields}, cache=pieces[-1].cache)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_loading_report() -> Iterator[None]:
    """Drop transformers' load report (a warning table of missing weights) while a caller loads a model whose
    missing weights are expected and checked by the caller itself. A filter, not a logger level: transformers
    runs extra checks of its own when that logger's level is raised."""
    logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def add_noise(z: torch.Tensor, tau: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``z_tilde = (1 - tau) * noise + tau * z`` (tau = 1 is clean): how frames are noised in training and how
    observed frames are corrupted to the context signal level at inference.

    z, noise: ``(B, T, C, H, W)``; tau: ``(B, T)``, broadcast over the latent dims.
    """
    tau = tau.reshape(tau.shape + (1,) * (z.dim() - tau.dim())).to(z.dtype)
    return (1 - tau) * noise + tau * z


def complete_inputs(chosen: Mapping[str, torch.Tensor], held: Mapping[str, torch.Tensor] | None,
                    config: DreamerConfig) -> dict[str, torch.Tensor]:
    """The world-model inputs of an action the policy chose: ``{input component: (B,)}``.

    A component that is both an input and a target is the chosen value itself; a held input (``"held": {"flag",
    "value"}`` in the action space, e.g. the last click's cell) takes its value target where its flag target fires
    and keeps ``held[name]`` (its value at the previous frame; 0 when unknown) elsewhere. An input that is neither
    cannot be chosen by a policy: ``ValueError`` naming it.
    """
    inputs = {}
    for name, spec in config.input_space.items():
        if name in chosen:
            inputs[name] = chosen[name]
        elif "held" in spec:
            flag, value = chosen[spec["held"]["flag"]], chosen[spec["held"]["value"]]
            before = held[name] if held is not None and name in held else torch.zeros_like(value)
            inputs[name] = torch.where(flag.bool(), value, before.to(value.dtype))
        else:
            raise ValueError(f"action component {name!r} is a world-model input that no policy target sets (give it "
                             "role 'both', or 'held' from targets): an agent cannot choose it")
    return inputs


def shortcut_sample(
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, num_steps: int
) -> torch.Tensor:
    """Generate clean latents from pure noise in ``num_steps`` shortcut steps (x-prediction).

    ``predict(z, tau, d)`` returns the model's x-prediction for noisy latents ``z (B, T, C, H, W)`` at signal
    level ``tau (B, T)`` and step size ``d (B, T)``; ``noise (B, T, C, H, W)`` is ``z`` at ``tau = 0``.
    With ``K = num_steps`` and ``d = 1 / K``, step ``k`` is at ``tau = k / K`` (the training grid) and moves
    ``z`` along the implied velocity ``(x_hat - z) / (1 - tau)`` by ``d``; the last step lands on
    ``tau = 1``, where ``z`` is the prediction itself (returned exactly, without the rounding of
    ``z + (x_hat - z)``). Returns ``(B, T, C, H, W)``.
    """
    if num_steps < 1 or num_steps & (num_steps - 1):
        raise ValueError(f"shortcut_sample: num_steps must be a power of two >= 1, got {num_steps}")
    z = noise
    d = 1.0 / num_steps
    for k in range(num_steps):
        tau = k * d
        x_hat = predict(z, torch.full(z.shape[:2], tau, device=z.device), torch.full(z.shape[:2], d, device=z.device))
        z = x_hat if k == num_steps - 1 else z + (x_hat - z) * (d / (1.0 - tau))
    return z


class DreamerActionEmbedding(nn.Module):
    """One action token per frame: frame ``t`` embeds ``actions[t - 1]``.

    A labeled action is ``base + sum_c embedding_c(actions_c)``; frame 0, frames whose previous
    action is unlabeled and every frame of an independent-frame example get the learned
    ``no_action`` vector (an independent frame is a start frame).
    """

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        # Only the world model's inputs are embedded (role `input` or `both`); policy-only targets are not.
        self.action_space = config.input_space
        self.components = nn.ModuleDict(
            {name: nn.Embedding(num_choices(spec), config.hidden_size) for name, spec in self.action_space.items()}
        )
        self.base = nn.Parameter(torch.zeros(config.hidden_size))
        self.no_action = nn.Parameter(torch.zeros(config.hidden_size))

    def embed(self, actions: dict[str, torch.Tensor] | None, labeled: torch.Tensor) -> torch.Tensor:
        """``actions {name: (B, T)}`` -> ``base + sum_c embedding_c(a_c)`` ``(B, T, D)`` (unlabeled entries
        may hold anything; they are replaced by ``no_action`` by the caller)."""
        batch, frames = labeled.shape
        embedded = self.base.expand(batch, frames, -1)
        if actions is None:
            return embedded
        for name, table in self.components.items():
            value = actions[name].to(labeled.device)
            if self.action_space[name]["type"] == "binary":
                index = (value.float() >= 0.5).long()  # bool or 0/1 (checked); unlabeled entries: anything
            else:
                index = torch.where(labeled, value.long(), 0)  # unlabeled entries may hold anything
            embedded = embedded + table(index)
        return embedded

    def forward(
        self,
        actions: dict[str, torch.Tensor] | None,
        action_mask: torch.Tensor | None,
        independent_frames: torch.Tensor | None,
        batch: int,
        frames: int,
        previous: tuple[dict[str, torch.Tensor] | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``actions {name: (B, T)}``, ``action_mask (B, T) bool`` -> action tokens ``(B, T, D)``.

        ``previous``: the actions taken at the frame before the first one fed, ``({name: (B,)}, labeled
        (B,))``, from a cache (None: the first frame fed is a start frame, or its previous action is unknown).
        """
        no_action = self.no_action.expand(batch, frames, -1)
        device = no_action.device
        labeled = (
            torch.zeros(batch, frames, dtype=torch.bool, device=device) if actions is None
            else torch.ones(batch, frames, dtype=torch.bool, device=device) if action_mask is None
            else action_mask.to(device=device, dtype=torch.bool)
        )
        embedded = self.embed(actions, labeled)
        before_actions, before_labeled = previous if previous is not None else (None, None)
        if before_actions is None or before_labeled is None:
            first, first_labeled = no_action[:, :1], torch.zeros_like(labeled[:, :1])
        else:
            first_labeled = before_labeled.to(device=device, dtype=torch.bool)[:, None]
            first = self.embed({k: v[:, None] for k, v in before_actions.items()}, first_labeled)
        # Shift by one frame: frame t sees the action taken at t - 1.
        shifted = torch.cat([first, embedded[:, :-1]], dim=1)
        shifted_labeled = torch.cat([first_labeled, labeled[:, :-1]], dim=1)
        if independent_frames is not None:
            shifted_labeled = shifted_labeled & ~independent_frames.to(device)[:, None]
        return torch.where(shifted_labeled[..., None], shifted, no_action)


class DreamerFrameEmbeddings(nn.Module):
    """Inputs of one frame -> its non-agent tokens ``(B, T, N_z + R + 2 (+ 1), D)``: with ``config.state_size``
    one more token per frame embeds the frame's state vector (a linear embedding of the known values and of which
    values are known, the paper's embedding of continuous inputs)."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        self.latent_proj = nn.Linear(config.latent_channels * p * p, config.hidden_size)
        self.registers = nn.Parameter(torch.zeros(config.num_register_tokens, config.hidden_size))
        # Where each latent token sits in the frame, for the agent tokens' reading (config docstring).
        self.latent_positions = (nn.Parameter(torch.zeros(config.num_latent_tokens, config.hidden_size))
                                 if config.latent_position_embeddings else None)
        self.signal_embed = nn.Embedding(config.k_max + 1, config.hidden_size // 2)
        self.step_embed = nn.Embedding(int(math.log2(config.k_max)) + 1, config.hidden_size // 2)
        self.actions = DreamerActionEmbedding(config)
        self.state_proj = nn.Linear(2 * config.state_size, config.hidden_size) if config.state_size else None

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
        previous_actions: tuple[dict[str, torch.Tensor] | None, torch.Tensor | None] | None = None,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t = latents.shape[:2]
        latent_tokens = self.latent_proj(self.patchify(latents))
        if self.latent_positions is not None:
            latent_tokens = latent_tokens + self.latent_positions.to(latent_tokens.dtype)
        tau_index, step_index = self.noise_indices(signal_level, step_size)
        noise_token = torch.cat([self.signal_embed(tau_index), self.step_embed(step_index)], dim=-1)
        action_token = self.actions(actions, action_mask, independent_frames, b, t, previous_actions)
        registers = self.registers.expand(b, t, -1, -1)
        tokens = [latent_tokens, registers, noise_token[:, :, None], action_token[:, :, None]]
        if self.state_proj is not None:
            tokens.append(self.state_token(state, state_mask, b, t, latent_tokens)[:, :, None])
        return torch.cat(tokens, dim=2)

    def state_token(self, state: torch.Tensor | None, state_mask: torch.Tensor | None, b: int, t: int,
                    like: torch.Tensor) -> torch.Tensor:
        """``state (B, T, S)``, ``state_mask (B, T, S)`` bool (None: all known; no state: nothing known) ->
        ``(B, T, D)``. Unknown values enter as 0 and say so through the mask half of the input."""
        size = self.config.state_size
        if state is None:
            values = torch.zeros(b, t, size, device=like.device, dtype=like.dtype)
            known = torch.zeros_like(values)
        else:
            known = torch.ones_like(state, dtype=like.dtype) if state_mask is None else state_mask.to(like.dtype)
            values = torch.where(known > 0, state.to(like.dtype), 0.0)
        return self.state_proj(torch.cat([values, known], dim=-1))


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


class DreamerPreTrainedModel(DreamerPreTrainedMixin, PreTrainedModel):
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
            if module.latent_positions is not None:
                init.normal_(module.latent_positions, std=std)
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
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the argument (and action component) of an invalid input; what
        is checked where: ``validation.check_model_inputs``. ``forward`` calls it first."""
        check_model_inputs(
            self.config, latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames,
            agent_tokens, synchronous=synchronous, where=type(self).__name__, state=state, state_mask=state_mask,
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
        past_key_values: DreamerCache | None = None,
        use_cache: bool = False,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
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
            past_key_values: a :class:`DreamerCache` of earlier frames: the frames fed continue them (at
                the next absolute positions, their first action token embedding the action the cache
                recorded for the last committed frame). Read only, unless ``use_cache``.
            use_cache: commit the frames fed: append their time-layer keys and values to
                ``past_key_values`` (a new cache when None) and remember their last action.
            state: ``(B, T, state_size)`` float, the frames' state vectors (with ``config.state_size``), an input
                of the frame observed at t like its latents; None: nothing known.
            state_mask: ``(B, T, state_size)`` bool, True where a state value is known (None: all known).
        Returns:
            :class:`DreamerModelOutput` with ``latent_pred (B, T, C, H, W)``, if agent tokens were given
            their final states ``agent_states (B, T, A, D)`` (before any norm), and the cache.
        """
        if not skip_input_checks:
            self.validate_inputs(
                latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames, agent_tokens,
                state=state, state_mask=state_mask,
            )
        b, t = latents.shape[:2]
        c = self.config
        cache = DreamerCache(c.time_context_length) if use_cache and past_key_values is None else past_key_values
        cached = cache.cached_frames if cache is not None else 0
        if independent_frames is not None and cached and bool(independent_frames.any()):
            raise ValueError(f"{type(self).__name__}: independent_frames cannot continue cached frames")
        latents = latents.to(self.dtype)
        if independent_frames is not None:
            independent_frames = independent_frames.to(device=latents.device, dtype=torch.bool)
        previous = (cache.last_actions, cache.last_action_labeled) if cache is not None else None
        hidden = self.embeddings(latents, signal_level, step_size, actions, action_mask, independent_frames, previous,
                                 state, state_mask)
        num_agent = 0 if agent_tokens is None else agent_tokens.shape[2]
        if num_agent:
            hidden = torch.cat([hidden, agent_tokens.to(hidden.dtype)], dim=2)
        hidden = run_blocks(self.layers, hidden, c, num_agent, independent_frames, cache, use_cache)
        if use_cache:
            last = None if actions is None else {name: value[:, -1] for name, value in actions.items()}
            labeled = None if actions is None else (
                torch.ones(b, dtype=torch.bool, device=hidden.device) if action_mask is None else action_mask[:, -1]
            )
            cache.advance(t, last, labeled)
        latent_tokens = self.latent_out(self.norm(hidden[:, :, : c.num_latent_tokens]))
        return DreamerModelOutput(
            latent_pred=self._unpatchify(latent_tokens),
            agent_states=hidden[:, :, hidden.shape[2] - num_agent :] if num_agent else None,
            cache=cache,
        )

    @torch.no_grad()
    def generate_frame(
        self, past_key_values: DreamerCache, num_steps: int = 4, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The next frame's latents ``(B, C, H, W)``, generated by :func:`shortcut_sample` from pure noise,
        conditioned on the committed frames of ``past_key_values`` and the action it recorded for the last
        of them. The cache is read, never written (commit the frame with a ``use_cache=True`` pass)."""
        if past_key_values.num_frames == 0:
            raise ValueError(f"{type(self).__name__}.generate_frame: the cache holds no committed frame")
        batch = next(iter(past_key_values.keys.values())).shape[0]
        c = self.config
        if num_steps > c.k_max:
            raise ValueError(f"{type(self).__name__}.generate_frame: num_steps {num_steps} is finer than k_max {c.k_max}")
        noise = torch.randn(batch, 1, c.latent_channels, c.latent_height, c.latent_width, generator=generator,
                            device=self.device, dtype=self.dtype)

        def predict(z: torch.Tensor, tau: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            return self(z, tau, d, past_key_values=past_key_values).latent_pred

        return shortcut_sample(predict, noise, num_steps)[:, 0]

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
        "prior_policy_head": "heads",
        "continue_head": "heads",
        "state_head": "heads",
    }

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__(config)
        self.dreamer = DreamerModel(config)
        self.agent_tokens = DreamerAgentTokens(config)
        self.agent_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.reward_head = DreamerRewardHead(config)
        self.policy_head = DreamerPolicyHead(config)
        self.value_head = DreamerValueHead(config)
        # Imagination training (phase 3) keeps the behaviour-cloned policy as a frozen prior, saved with the
        # model so that a finetuned agent still knows it.
        self.prior_policy_head = DreamerPolicyHead(config) if config.use_behavior_prior else None
        self.continue_head = DreamerContinueHead(config) if config.continuation_head else None
        self.state_head = DreamerStateHead(config) if config.predict_state else None
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
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> None:
        """As :meth:`DreamerModel.validate_inputs`; ``forward`` calls it first."""
        check_model_inputs(
            self.config, latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames,
            synchronous=synchronous, where=type(self).__name__, state=state, state_mask=state_mask,
        )

    def forward(
        self,
        latents: torch.Tensor | None = None,
        signal_level: torch.Tensor | None = None,
        step_size: torch.Tensor | None = None,
        actions: dict[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        independent_frames: torch.Tensor | None = None,
        past_key_values: DreamerCache | None = None,
        use_cache: bool = False,
        agent_hidden: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> DreamerAgentOutput:
        """Arguments as :meth:`DreamerModel.forward`; ``task_ids (B,)`` or ``(B, T)``, None = task 0.

        ``agent_hidden`` is the mean over the frame's agent tokens of their RMS-normalised final states.
        Given ``agent_hidden (B, T, D)`` instead of latents, only the heads run, on those states (imagination
        training reads the heads on states of its rollouts; going through ``forward`` keeps distributed
        wrappers in the loop). With ``config.use_behavior_prior`` the output also has ``prior_policy_logits``.
        """
        cache = None
        latent_pred = None
        if agent_hidden is None:
            if latents is None or signal_level is None:
                raise ValueError("DreamerAgentModel: give latents and signal_level, or agent_hidden (heads only)")
            self.validate_inputs(latents, signal_level, step_size, actions, action_mask, task_ids, independent_frames,
                                 state=state, state_mask=state_mask)
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
                past_key_values=past_key_values,
                use_cache=use_cache,
                state=state,
                state_mask=state_mask,
            )
            agent_hidden = self.agent_norm(out.agent_states).mean(dim=2)
            latent_pred, cache = out.latent_pred, out.cache
        elif agent_hidden.dim() != 3 or agent_hidden.shape[-1] != self.config.hidden_size:
            raise ValueError(f"DreamerAgentModel: agent_hidden must be (B, T, {self.config.hidden_size}), "
                             f"got {tuple(agent_hidden.shape)}")
        return DreamerAgentOutput(
            latent_pred=latent_pred,
            agent_hidden=agent_hidden,
            reward_logits=self.reward_head(agent_hidden),
            policy_logits=self.policy_head(agent_hidden),
            value_logits=self.value_head(agent_hidden),
            prior_policy_logits=self.prior_policy_head(agent_hidden) if self.prior_policy_head is not None else None,
            continue_logits=self.continue_head(agent_hidden) if self.continue_head is not None else None,
            state_pred=self.state_head(agent_hidden) if self.state_head is not None else None,
            cache=cache,
        )

    def reward_bins(self) -> torch.Tensor:
        """Twohot bin centres in symlog space, ``(num_bins,)`` float32 on the model's device."""
        c = self.config
        return twohot_bins(c.num_bins, c.bins_low, c.bins_high).to(self.device)

    def value_bins(self) -> torch.Tensor:
        """The value head's twohot bin centres in symlog space, ``(num_bins,)`` float32 on the model's device."""
        return twohot_bins(self.config.num_bins, *self.config.value_bins_range).to(self.device)

    def commit_frames(
        self,
        latents: torch.Tensor,
        past_key_values: DreamerCache | None = None,
        actions: Mapping[str, torch.Tensor] | None = None,
        action_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        frames_per_pass: int = COMMIT_FRAMES_PER_PASS,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> DreamerAgentOutput:
        """Feed observed (or generated) frames as context, as in training: slightly corrupted to the config's
        context signal level at the finest step, appended to the cache (a new one when None).

        latents: ``(B, T, C, H, W)`` clean latents; actions / action_mask: those taken at these frames
        (``(B, T)``; None where not chosen yet: record them later with ``DreamerCache.record_actions``);
        task_ids: ``(B,)`` or ``(B, T)``; state / state_mask: the frames' state vectors ``(B, T, state_size)``
        (``config.state_size``; None: unknown). A long context is committed in consecutive chunks of at most
        ``frames_per_pass`` frames over the whole batch (at least one frame per pass), so peak memory does not
        grow with ``T``; the result equals one pass over all frames (the cache carries every chunk to the next).
        Returns the outputs at these frames (agent state and heads, concatenated over chunks) with the cache.
        """
        c = self.config
        b, t = latents.shape[:2]
        level = torch.full((b, t), c.context_tau, device=latents.device)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        observed = add_noise(latents, level, noise)
        step = torch.full_like(level, 1.0 / c.k_max)
        chunk = max(1, frames_per_pass // max(b, 1))
        pieces = []
        cache = past_key_values
        for start in range(0, t, chunk):
            part = slice(start, min(t, start + chunk))
            out = self(
                observed[:, part], level[:, part], step[:, part],
                actions={name: value[:, part] for name, value in actions.items()} if actions else None,
                action_mask=action_mask[:, part] if action_mask is not None else None,
                task_ids=task_ids[:, part] if task_ids is not None and task_ids.dim() == 2 else task_ids,
                past_key_values=cache, use_cache=True,
                state=state[:, part] if state is not None else None,
                state_mask=state_mask[:, part] if state_mask is not None else None,
            )
            cache = out.cache
            pieces.append(out)
        return pieces[0] if len(pieces) == 1 else _concat_frames(pieces)

    @torch.no_grad()
    def imagine(
        self,
        context_latents: torch.Tensor,
        context_actions: Mapping[str, torch.Tensor] | None,
        horizon: int,
        num_steps: int = 4,
        policy: Callable[[torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
        generator: torch.Generator | None = None,
        task_ids: torch.Tensor | None = None,
        context_action_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        context_state: torch.Tensor | None = None,
        context_state_mask: torch.Tensor | None = None,
    ) -> ImaginationOutput:
        """Roll the world model out under a policy, from real context windows.

        The context ``(B, T0, C, H, W)`` is committed with its true actions ``{name: (B, T0)}`` (the action at
        the last context frame is not used: it is the first one the policy chooses). Then, ``horizon`` times:
        sample an action from the policy at the last committed frame, generate the next frame with the
        ``num_steps``-step shortcut sampler, commit it, and read its reward and value. ``policy`` maps agent
        states ``(B, D)`` to policy logits ``{name: (B, n)}``; None uses the model's own policy head (offset
        0). All randomness comes from ``generator``: the same seed gives the same rollouts. Indexing:
        :class:`ImaginationOutput`. The policy chooses the policy's components (``config.policy_space``); a held
        world-model input follows from them (:func:`complete_inputs`), starting from its value at the frame before
        the last context frame. With a state vector, the context's (``context_state``) is fed and generated frames
        have none (the world model generates latents only).
        """
        c = self.config
        where = "DreamerAgentModel.imagine"
        horizon = check_positive_int(horizon, "horizon", where)
        num_steps = check_positive_int(num_steps, "num_steps", where)
        check_generator(generator, where)
        check_temperature(temperature, where)
        latent_shape = (c.latent_channels, c.latent_height, c.latent_width)
        check_tensor(context_latents, "context_latents", where, f"(B, T0, {', '.join(map(str, latent_shape))})")
        if context_latents.dim() != 5 or tuple(context_latents.shape[2:]) != latent_shape or context_latents.shape[1] < 1:
            raise ValueError(f"{where}: context_latents must have shape (B, T0, {', '.join(map(str, latent_shape))}) "
                             f"with T0 >= 1 context frames, got {tuple(context_latents.shape)}")
        b, t0 = context_latents.shape[:2]
        if context_action_mask is not None and tuple(context_action_mask.shape) != (b, t0):
            raise ValueError(f"{where}: context_action_mask must have shape (B, T0) = ({b}, {t0}), "
                             f"got {tuple(context_action_mask.shape)}")
        if task_ids is not None and (not isinstance(task_ids, torch.Tensor) or tuple(task_ids.shape) != (b,)):
            got = tuple(task_ids.shape) if isinstance(task_ids, torch.Tensor) else type(task_ids).__name__
            raise ValueError(f"{where}: task_ids must be a (B,) = ({b},) tensor (one task per rollout), got {got}")
        if policy is None:
            def policy(hidden: torch.Tensor) -> dict[str, torch.Tensor]:
                return {name: logits[:, 0] for name, logits in self.policy_head(hidden).items()}

        mask = torch.ones(b, t0, dtype=torch.bool, device=context_latents.device) if context_action_mask is None \
            else context_action_mask.bool().clone()
        mask[:, -1] = False  # chosen by the policy below
        out = self.commit_frames(context_latents.to(self.dtype), None, context_actions, mask if context_actions else None,
                                 task_ids, generator, state=context_state, state_mask=context_state_mask)
        held = {name: context_actions[name][:, -2] if t0 >= 2 else torch.zeros_like(context_actions[name][:, -1])
                for name in c.input_space if context_actions and name in context_actions}
        cache = out.cache
        hidden = [out.agent_hidden[:, -1]]
        values = [twohot_decode(out.value_logits[:, -1], self.value_bins())]
        latents, rewards, log_probs, continues = [], [], [], []
        actions: dict[str, list[torch.Tensor]] = {name: [] for name in {**c.policy_space, **c.input_space}}
        reward_bins, value_bins = self.reward_bins(), self.value_bins()
        for _ in range(horizon):
            logits = policy(hidden[-1])
            check_policy_logits(logits, c.policy_space, b, where)
            chosen = policy_sample(logits, c.policy_space, temperature=temperature, generator=generator)
            log_probs.append(policy_log_prob(logits, chosen, c.policy_space))
            chosen = {**chosen, **complete_inputs(chosen, held, c)}
            held = {name: chosen[name] for name in c.input_space}
            cache.record_actions(chosen)
            frame = self.dreamer.generate_frame(cache, num_steps, generator)
            out = self.commit_frames(frame[:, None], cache, task_ids=task_ids, generator=generator)
            latents.append(frame)
            rewards.append(twohot_decode(out.reward_logits[:, -1, 0], reward_bins))
            values.append(twohot_decode(out.value_logits[:, -1], value_bins))
            hidden.append(out.agent_hidden[:, -1])
            if out.continue_logits is not None:
                continues.append(torch.sigmoid(out.continue_logits[:, -1].float()))
            for name in actions:
                actions[name].append(chosen[name])
        return ImaginationOutput(
            latents=torch.stack(latents, dim=1),
            actions={name: torch.stack(values_, dim=1) for name, values_ in actions.items()},
            log_probs=torch.stack(log_probs, dim=1),
            rewards=torch.stack(rewards, dim=1),
            values=torch.stack(values, dim=1),
            agent_hidden=torch.stack(hidden, dim=1),
            continues=torch.stack(continues, dim=1) if continues else None,
        )

    @classmethod
    def from_backbone(cls, pretrained_model_name_or_path: str, **kwargs) -> "DreamerAgentModel":
        """Grow a :class:`DreamerModel` checkpoint into an agent model, and check the loading report.

        ``kwargs`` go to ``from_pretrained``: config fields the backbone does not use
        (``num_tasks``, ``num_agent_tokens``, ``mtp_length``, ``num_bins``, ``bins_low``,
        ``bins_high``, ``head_hidden_size``, ``head_layers``) may be overridden there. Raises
        ``ValueError`` if any weight outside the agent modules is missing, or if any checkpoint weight
        is unexpected or of the wrong shape (a changed backbone field, e.g. the action space).
        """
        new_modules = tuple(name for name, role in cls.module_roles.items() if role != "backbone")
        return cls.grow_from(pretrained_model_name_or_path, new_modules, **kwargs)

    @classmethod
    def grow_from(cls, pretrained_model_name_or_path: str, new_modules: tuple[str, ...], **kwargs) -> "DreamerAgentModel":
        """Load a checkpoint that lacks exactly the top-level modules ``new_modules`` (newly initialised), and
        nothing else: any other missing, unexpected or mismatched weight raises ``ValueError``. transformers'
        loading report, which would list the expected missing weights as a warning, is not printed."""
        with _quiet_loading_report():
            model, info = cls.from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = {
            "missing weights": [k for k in info["missing_keys"] if k.split(".", 1)[0] not in new_modules],
            "unexpected weights": list(info["unexpected_keys"]),
            "mismatched shapes": [str(m) for m in info["mismatched_keys"]],
            "errors": list(info.get("error_msgs", [])),
        }
        problems = {name: keys for name, keys in problems.items() if keys}
        if problems:
            raise ValueError(f"{cls.__name__}: {pretrained_model_name_or_path!r} does not grow into this model "
                             f"(only {list(new_modules)} may be new): {problems}")
        return model
