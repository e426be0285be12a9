"""Configuration of the DreamerV4 causal tokenizer (phase 0): video frames <-> the dynamics' latents."""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

# Presets (docs/tokenizer.md): "tiny" and "small" train on a CPU (64x64 frames, 8x8 patches); "medium" and
# "large" are GPU sizes, "large" with the paper's bottleneck (512 tokens x 16 channels -> (32, 16, 16)).
# Head dim 32 (tiny) or 64; GQA with half as many KV heads as query heads, as the dynamics presets.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        image_height=64, image_width=64, patch_size=8, hidden_size=128, num_encoder_layers=4, num_decoder_layers=4,
        num_attention_heads=4, num_key_value_heads=2, num_latent_tokens=16, latent_token_dim=16,
        latent_channels=16, latent_height=4, latent_width=4,
    ),
    "small": dict(
        image_height=64, image_width=64, patch_size=8, hidden_size=256, num_encoder_layers=8, num_decoder_layers=8,
        num_attention_heads=4, num_key_value_heads=2, num_latent_tokens=64, latent_token_dim=16,
        latent_channels=16, latent_height=8, latent_width=8,
    ),
    "medium": dict(
        image_height=128, image_width=128, patch_size=8, hidden_size=512, num_encoder_layers=12, num_decoder_layers=12,
        num_attention_heads=8, num_key_value_heads=4, num_latent_tokens=256, latent_token_dim=16,
        latent_channels=16, latent_height=16, latent_width=16,
    ),
    "large": dict(
        image_height=256, image_width=256, patch_size=16, hidden_size=1024, num_encoder_layers=16,
        num_decoder_layers=16, num_attention_heads=16, num_key_value_heads=8, num_latent_tokens=512,
        latent_token_dim=16, latent_channels=32, latent_height=16, latent_width=16,
    ),
}


class DreamerTokenizerConfig(PretrainedConfig):
    r"""Hyperparameters of :class:`DreamerTokenizer`.

    Args:
        image_height, image_width: frame size in pixels (RGB frames; both divisible by ``patch_size``).
        patch_size: side of the square pixel patch that becomes one token: ``N_p = (H/p) * (W/p)`` patch
            tokens per frame, each the ``3 * p * p`` values of its patch.
        hidden_size, num_attention_heads, num_key_value_heads: transformer width, query heads and key/value
            heads (GQA), shared by encoder and decoder.
        num_encoder_layers, num_decoder_layers: depth of each stack.
        intermediate_size: SwiGLU width (default ``8/3 * hidden_size`` rounded up to a multiple of 64).
        time_every: in each stack, layers ``i`` with ``(i + 1) % time_every == 0`` are causal time-attention
            layers, all others space layers (as in the dynamics).
        num_latent_tokens, latent_token_dim: the bottleneck, ``N_b`` learned latent tokens per frame, each
            read out to ``D_b`` channels (then ``tanh``).
        latent_channels, latent_height, latent_width: ``(C, H, W)`` of one frame's latent as the dynamics
            model (``DreamerConfig``) takes it. The bottleneck ``(N_b, D_b)`` is reshaped to it by one rule:
            its ``N_b * D_b`` values, token by token, are regrouped into ``H * W`` spatial positions of ``C``
            channels in row-major order, i.e. ``latent[c, i, j] = bottleneck.flatten()[(i * W + j) * C + c]``.
            So ``N_b * D_b == C * H * W`` is required, and ``C`` must be a multiple of ``D_b`` (position
            ``(i, j)`` concatenates ``C / D_b`` consecutive tokens: the paper's 512 x 16 -> 256 x 32) or
            ``D_b`` a multiple of ``C`` (a token fills ``D_b / C`` consecutive positions). With
            ``N_b = H * W`` and ``D_b = C``, token ``n`` is position ``(n // W, n % W)``.
        mask_prob_max: masked autoencoding: in training, each image's patch tokens are replaced by a learned
            mask embedding with probability ``p ~ U(0, mask_prob_max)`` drawn per image (0 disables it).
        attn_logit_softcapping: ``cap * tanh(logits / cap)`` on attention logits; ``None`` (or 0) disables it.
        qk_norm: RMS-normalise queries and keys per head before RoPE.
        rope_theta: RoPE base (1D over the token slot in space layers, over the frame in time layers).
        rms_norm_eps: epsilon of every RMSNorm.
        initializer_range: std of the normal initialisation of linear layers and learned tokens.
        time_context_length: how many frames (its own included) a frame's time attention reads, a sliding
            causal window (the same in training and frame by frame with a cache). ``None``: all earlier frames.
        slot_residuals: a direct path for the picture besides attention: each latent token starts from the mean
            of the patch tokens it covers, and each read-out token from the (projected) latent tokens covering
            its patch (``modeling_tokenizer.slot_membership``). Without it, on frames that differ in a few pixels
            (CartPole: 2% of them) the encoder's output stopped depending on the frame within 25 steps and the
            decoder drew the mean picture (docs/tokenizer.md). Off by default: saved tokenizers keep their
            architecture.
    """

    model_type = "dreamer_tokenizer"

    def __init__(
        self,
        image_height: int = 64,
        image_width: int = 64,
        patch_size: int = 8,
        hidden_size: int = 128,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        intermediate_size: int | None = None,
        time_every: int = 4,
        num_latent_tokens: int = 16,
        latent_token_dim: int = 16,
        latent_channels: int = 16,
        latent_height: int = 4,
        latent_width: int = 4,
        mask_prob_max: float = 0.9,
        attn_logit_softcapping: float | None = 50.0,
        qk_norm: bool = True,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        time_context_length: int | None = 16,
        slot_residuals: bool = False,
        **kwargs: Any,
    ) -> None:
        self.image_height = image_height
        self.image_width = image_width
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        # Same rule as DreamerConfig: the parameter count of a 4x GELU MLP.
        self.intermediate_size = 64 * math.ceil(8 * hidden_size / 3 / 64) if intermediate_size is None else intermediate_size
        self.time_every = time_every
        self.num_latent_tokens = num_latent_tokens
        self.latent_token_dim = latent_token_dim
        self.latent_channels = latent_channels
        self.latent_height = latent_height
        self.latent_width = latent_width
        self.mask_prob_max = mask_prob_max
        self.attn_logit_softcapping = attn_logit_softcapping if attn_logit_softcapping else None
        self.qk_norm = qk_norm
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.time_context_length = time_context_length
        self.slot_residuals = bool(slot_residuals)
        super().__init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raise ``ValueError`` naming every inconsistent field."""
        problems = []
        for name in ("image_height", "image_width", "patch_size", "hidden_size", "num_encoder_layers",
                     "num_decoder_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                     "time_every", "num_latent_tokens", "latent_token_dim", "latent_channels", "latent_height",
                     "latent_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:  # the checks below divide by these fields
            raise ValueError("DreamerTokenizerConfig: " + "; ".join(problems))
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            problems.append(f"image_height x image_width {self.image_height}x{self.image_width} not divisible by "
                            f"patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by "
                            f"num_attention_heads {self.num_attention_heads}")
        elif self.head_dim % 2:
            problems.append(f"head dim hidden_size / num_attention_heads = {self.head_dim} must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads {self.num_attention_heads} not divisible by "
                            f"num_key_value_heads {self.num_key_value_heads}")
        bottleneck = self.num_latent_tokens * self.latent_token_dim
        latent = self.latent_channels * self.latent_height * self.latent_width
        if bottleneck != latent:
            problems.append(f"num_latent_tokens * latent_token_dim = {self.num_latent_tokens} * "
                            f"{self.latent_token_dim} = {bottleneck} must equal latent_channels * latent_height * latent_width = "
                            f"{self.latent_channels} * {self.latent_height} * {self.latent_width} = {latent}")
        elif self.latent_channels % self.latent_token_dim and self.latent_token_dim % self.latent_channels:
            problems.append(f"latent_channels {self.latent_channels} and latent_token_dim {self.latent_token_dim}: "
                            "one must be a multiple of the other (whole tokens per latent position, or whole "
                            "positions per token)")
        if not 0.0 <= self.mask_prob_max < 1.0:
            problems.append(f"mask_prob_max {self.mask_prob_max} must be in [0, 1)")
        if self.attn_logit_softcapping is not None and not self.attn_logit_softcapping > 0:
            problems.append(f"attn_logit_softcapping {self.attn_logit_softcapping} must be > 0 (or None: no cap)")
        context = self.time_context_length
        if context is not None and (not isinstance(context, int) or context < 1):
            problems.append(f"time_context_length {context!r} must be an integer >= 1 (or None: unlimited)")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0 or not self.initializer_range >= 0:
            problems.append(f"rms_norm_eps {self.rms_norm_eps} and rope_theta {self.rope_theta} must be > 0, "
                            f"initializer_range {self.initializer_range} >= 0")
        if problems:
            raise ValueError("DreamerTokenizerConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """As ``PretrainedConfig.to_dict``, with every ``auto_map`` entry a plain ``"module.Class"`` string.

        transformers' ``save_pretrained`` writes the entry of any class whose name contains "Tokenizer" as a
        text tokenizer's ``(slow, fast)`` pair, ``["modeling_tokenizer.DreamerTokenizer", None]``, which
        ``AutoModel.from_pretrained(..., trust_remote_code=True)`` cannot load; a model is one class.
        """
        output = super().to_dict()
        if output.get("auto_map"):
            output["auto_map"] = {
                auto_class: reference[0]
                if isinstance(reference, (list, tuple)) and all(other is None for other in reference[1:]) else reference
                for auto_class, reference in output["auto_map"].items()
            }
        return output

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patches per column and per row: ``(image_height / p, image_width / p)``."""
        return self.image_height // self.patch_size, self.image_width // self.patch_size

    @property
    def num_patches(self) -> int:
        """``N_p``, patch tokens (and decoder read-out tokens) per frame."""
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        """Values of one patch: ``3 * p * p``."""
        return 3 * self.patch_size * self.patch_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one frame's latent: the ``latent_channels``, ``latent_height``, ``latent_width`` of
        the dynamics' ``DreamerConfig``."""
        return self.latent_channels, self.latent_height, self.latent_width

    @property
    def time_layer_indices(self) -> list[int]:
        """Indices of the time-attention layers within a stack (encoder and decoder each count from 0):
        the last layer of each group of ``time_every``. ``DreamerBlock`` reads it."""
        depth = max(self.num_encoder_layers, self.num_decoder_layers)
        return [i for i in range(depth) if (i + 1) % self.time_every == 0]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DreamerTokenizerConfig":
        """``DreamerTokenizerConfig.from_preset("tiny" | "small" | "medium" | "large", **overrides)``."""
        if name not in PRESETS:
            raise ValueError(f"DreamerTokenizerConfig.from_preset: unknown preset {name!r}, "
                             f"choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
