"""Configuration of the DreamerV4 dynamics transformer and its agent (phase 2) extension."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from transformers import PretrainedConfig
from transformers.utils import logging

from .action_space import default_action_space, input_components, target_components, validate_action_space

logger = logging.get_logger(__name__)

# Field names of earlier versions of this config -> their current (transformers-style) names.
# Saved configs with the old keys still load; `config.<old name>` reads and writes the new field.
RENAMED_FIELDS: dict[str, str] = {
    "attn_logit_softcap": "attn_logit_softcapping",  # Gemma 2's name for the same cap
    "agent_tokens_per_frame": "num_agent_tokens",  # beside `num_register_tokens`
}

# Widths and depths of the four presets (docs/model.md); head dim 64; GQA with half as many KV heads as query heads.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "num_key_value_heads": 4},
    "medium": {"hidden_size": 768, "num_hidden_layers": 18, "num_attention_heads": 12, "num_key_value_heads": 6},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8},
}


def _swiglu_width(hidden_size: int) -> int:
    """8/3 * hidden_size rounded up to a multiple of 64: the parameter count of a 4x GELU MLP."""
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


class DreamerConfig(PretrainedConfig):
    r"""Hyperparameters of :class:`DreamerModel` and :class:`DreamerAgentModel`.

    Args:
        latent_channels, latent_height, latent_width: shape ``(C, H, W)`` of one frame's tokenizer latent.
        patch_size: side of the square latent patch that becomes one token (``H`` and ``W`` divisible by it).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads: transformer width, depth,
            query heads and key/value heads (GQA; equal to the query heads for plain multi-head attention).
        intermediate_size: SwiGLU width (default ``8/3 * hidden_size`` rounded up to a multiple of 64).
        time_every: every ``time_every``-th layer (layer indices ``i`` with ``(i + 1) % time_every == 0``)
            is a causal time-attention layer; all others are space layers.
        num_register_tokens: learned register tokens per frame.
        k_max: finest shortcut step count; ``d_min = 1 / k_max`` (a power of two).
        attn_logit_softcapping: ``cap * tanh(logits / cap)`` on attention logits; ``None`` (or 0) disables it.
        qk_norm: RMS-normalise queries and keys per head before RoPE.
        rope_theta: RoPE base (1D over the token slot in space layers, over the frame in time layers).
        rms_norm_eps: epsilon of every RMSNorm.
        action_space: ordered ``{name: {"type": "categorical", "n": n} | {"type": "binary"}}``.
        num_tasks, num_agent_tokens: task-embedding rows and agent tokens per frame (agent model).
        mtp_length: L, the multi-token-prediction horizon (heads predict offsets ``0..L``).
        num_bins, bins_low, bins_high: twohot bins, uniform in symlog space over ``[bins_low, bins_high]``.
        head_hidden_size, head_layers: width (default ``hidden_size``) and hidden layers of the head MLPs.
        initializer_range: std of the normal initialisation of linear, embedding and token parameters.
        time_context_length: C, how many frames (its own included) a frame's time attention reads: a
            sliding causal window, the same in training and at inference, so a model behaves the same on
            an unbounded stream as on its training windows. ``None``: all earlier frames. Training sets it
            to the window length when that is shorter (docs/model.md).
        context_signal_level: the signal level at which observed (committed) frames are fed to the model
            at inference, as in training (the paper's slightly corrupted context); the nearest level of the
            ``k / K_max`` grid is used (:attr:`context_tau`).
        value_bins_low, value_bins_high: twohot range of the value head (symlog space; returns span many
            frames' rewards); ``None``: the reward range.
        use_behavior_prior: the agent carries a frozen copy of its behaviour-cloned policy head
            (``prior_policy_head``), the prior of imagination training (phase 3).
        continuation_head: the agent predicts whether the episode goes on after each frame (``continue_logits``),
            for environments whose episodes end; imagination's returns stop at predicted ends.
        state_size, state_names: an optional per-frame state vector (e.g. health and level read from a game) of
            ``state_size`` named values, embedded as one more token per frame (an input of the world model, like
            the latents); 0: none.
        predict_state: the agent model also predicts the frame's state vector from its agent state
            (``state_pred``, an auxiliary head).
        tokenizer_name, tokenizer_hash: the tokenizer whose latents the model was trained on (recorded at
            prepare time); a model refuses a tokenizer that differs (``check_tokenizer``).
        latent_position_embeddings: add a learned embedding per latent-token position (``(N_z, D)``) to the
            latent tokens. Our addition, not the paper's: RoPE puts position into the attention scores only, so
            the agent tokens read *what* the latent tokens hold but not *where* it is, and a policy that depends
            on where things are in the frame (a pole's lean, a link's swing) is not learned from tokenizer
            latents without it (docs/model.md). Off by default: saved models keep their architecture.

    The earlier names ``attn_logit_softcap`` and ``agent_tokens_per_frame`` are accepted (keyword or
    saved ``config.json``) and read/write the fields above.
    """

    model_type = "dreamer"
    attribute_map = dict(RENAMED_FIELDS)

    def __init__(
        self,
        latent_channels: int = 32,
        latent_height: int = 16,
        latent_width: int = 16,
        patch_size: int = 1,
        hidden_size: int = 256,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        intermediate_size: int | None = None,
        time_every: int = 4,
        num_register_tokens: int = 8,
        k_max: int = 64,
        attn_logit_softcapping: float | None = 50.0,
        qk_norm: bool = True,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        action_space: dict[str, dict[str, Any]] | None = None,
        num_tasks: int = 1,
        num_agent_tokens: int = 1,
        mtp_length: int = 8,
        num_bins: int = 255,
        bins_low: float = -5.0,
        bins_high: float = 5.0,
        head_hidden_size: int | None = None,
        head_layers: int = 2,
        initializer_range: float = 0.02,
        time_context_length: int | None = 192,
        context_signal_level: float = 0.9,
        value_bins_low: float | None = None,
        value_bins_high: float | None = None,
        use_behavior_prior: bool = False,
        continuation_head: bool = False,
        state_size: int = 0,
        state_names: list[str] | None = None,
        predict_state: bool = False,
        tokenizer_name: str | None = None,
        tokenizer_hash: str | None = None,
        latent_position_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        for old, new in RENAMED_FIELDS.items():
            if old in kwargs:
                logger.warning_once(f"DreamerConfig: `{old}` is the former name of `{new}`; using it as `{new}`.")
                value = kwargs.pop(old)
                if new == "attn_logit_softcapping":
                    attn_logit_softcapping = value
                else:
                    num_agent_tokens = value
        self.latent_channels = latent_channels
        self.latent_height = latent_height
        self.latent_width = latent_width
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else _swiglu_width(hidden_size)
        self.time_every = time_every
        self.num_register_tokens = num_register_tokens
        self.k_max = k_max
        self.attn_logit_softcapping = attn_logit_softcapping if attn_logit_softcapping else None
        self.qk_norm = qk_norm
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.action_space = copy.deepcopy(action_space) if action_space is not None else default_action_space()
        self.num_tasks = num_tasks
        self.num_agent_tokens = num_agent_tokens
        self.mtp_length = mtp_length
        self.num_bins = num_bins
        self.bins_low = bins_low
        self.bins_high = bins_high
        self.head_hidden_size = head_hidden_size if head_hidden_size is not None else hidden_size
        self.head_layers = head_layers
        self.initializer_range = initializer_range
        self.time_context_length = time_context_length
        self.context_signal_level = context_signal_level
        self.value_bins_low = value_bins_low
        self.value_bins_high = value_bins_high
        self.use_behavior_prior = use_behavior_prior
        self.continuation_head = continuation_head
        self.state_size = state_size
        self.state_names = list(state_names) if state_names is not None else [f"state_{i}" for i in range(state_size)]
        self.predict_state = predict_state
        self.tokenizer_name = tokenizer_name
        self.tokenizer_hash = tokenizer_hash
        self.latent_position_embeddings = bool(latent_position_embeddings)
        super().__init__(**kwargs)
        # AutoModel maps this config to a tuple of classes and picks one by `architectures`;
        # transformers iterates that field without a None check, so it stays a list ([] = none).
        if self.architectures is None:
            self.architectures = []
        self.check_fields()

    def check_fields(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        problems = []
        if self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            problems.append(f"latent {self.latent_height}x{self.latent_width} not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by num_attention_heads {self.num_attention_heads}")
        elif self.head_dim % 2:
            problems.append(f"head dim {self.head_dim} must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads {self.num_attention_heads} not divisible by num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_size % 2:
            problems.append(f"hidden_size {self.hidden_size} must be even (the noise token concatenates two halves)")
        if self.k_max < 1 or self.k_max & (self.k_max - 1):
            problems.append(f"k_max {self.k_max} must be a power of two")
        if self.time_every < 1:
            problems.append(f"time_every {self.time_every} must be >= 1")
        if self.num_tasks < 1 or self.num_agent_tokens < 1 or self.mtp_length < 0 or self.head_layers < 0:
            problems.append("num_tasks and num_agent_tokens must be >= 1, mtp_length and head_layers >= 0")
        if self.num_bins < 2 or not self.bins_high > self.bins_low:
            problems.append(f"twohot bins need num_bins >= 2 and bins_high > bins_low, got {self.num_bins}, "
                            f"[{self.bins_low}, {self.bins_high}]")
        if self.state_size < 0 or len(self.state_names) != self.state_size:
            problems.append(f"state_size {self.state_size} must be >= 0 and match the {len(self.state_names)} state_names")
        if self.predict_state and not self.state_size:
            problems.append("predict_state needs a state vector (state_size > 0)")
        if self.time_context_length is not None and self.time_context_length < 1:
            problems.append(f"time_context_length {self.time_context_length} must be >= 1 (or None: unlimited)")
        if not 0.0 <= self.context_signal_level <= 1.0:
            problems.append(f"context_signal_level {self.context_signal_level} must be in [0, 1]")
        value_low, value_high = self.value_bins_range
        if not value_high > value_low:
            problems.append(f"value twohot range needs value_bins_high > value_bins_low, got [{value_low}, {value_high}]")
        if problems:
            raise ValueError("DreamerConfig: " + "; ".join(problems))
        try:
            validate_action_space(self.action_space)
        except ValueError as error:
            raise ValueError(f"DreamerConfig.action_space: {error}") from None

    def to_json_string(self, use_diff: bool = True) -> str:
        """As ``PretrainedConfig.to_json_string`` but keeps the action space in its order.

        The base class sorts every key, which would silently reorder the action components
        (an ordered dict); here only the top-level keys are sorted.
        """
        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        config_dict = self._encode_special_floats(config_dict)
        return json.dumps(dict(sorted(config_dict.items())), indent=2) + "\n"

    @property
    def context_tau(self) -> float:
        """:attr:`context_signal_level` on the signal-level grid ``k / K_max`` (the nearest level)."""
        return round(self.context_signal_level * self.k_max) / self.k_max

    @property
    def value_bins_range(self) -> tuple[float, float]:
        """``(low, high)`` of the value head's twohot bins (symlog space)."""
        low = self.bins_low if self.value_bins_low is None else self.value_bins_low
        high = self.bins_high if self.value_bins_high is None else self.value_bins_high
        return low, high

    @property
    def input_space(self) -> dict[str, dict[str, Any]]:
        """The action components the world model embeds (role ``input`` or ``both``), in order."""
        return input_components(self.action_space)

    @property
    def policy_space(self) -> dict[str, dict[str, Any]]:
        """The action components the policy head predicts (role ``target`` or ``both``), in order."""
        return target_components(self.action_space)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_latent_tokens(self) -> int:
        """Latent tokens per frame: ``(H / p) * (W / p)``."""
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    @property
    def time_layer_indices(self) -> list[int]:
        """Indices of the time-attention layers: the last layer of each group of ``time_every``."""
        return [i for i in range(self.num_hidden_layers) if (i + 1) % self.time_every == 0]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DreamerConfig":
        """``DreamerConfig.from_preset("tiny" | "small" | "medium" | "large", **overrides)``."""
        if name not in PRESETS:
            raise ValueError(f"DreamerConfig.from_preset: unknown preset {name!r}, choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
