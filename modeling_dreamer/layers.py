"""Building blocks of the dynamics transformer: RMSNorm, SwiGLU, RoPE, attention and blocks.

Hidden states of the whole model have the layout ``(B, T, S, D)``: batch, frames, token slots per
frame, width. A *space* block attends within each frame (``B * T`` sequences of ``S`` tokens); a
*time* block attends causally along frames for each slot separately (``B * S`` sequences of ``T``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import (
    check_attn_implementation,
    get_attention_function,
    resolve_attn_implementation,
    time_attention_mask,
)
from .cache import DreamerCache
from .configuration_dreamer import DreamerConfig


class DreamerRMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned gain (initialised to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gain is cast to the input's dtype: under bf16 autocast the input is bf16 while the
        # master weight stays fp32, and `F.rms_norm` with mismatched dtypes warns and leaves its
        # fused kernel (which accumulates in fp32 either way). A no-op when the dtypes agree.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class DreamerSwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; gate and up share one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rotary_tables(
    length: int, head_dim: int, theta: float, device: torch.device, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables ``(cos, sin)``, each ``(length, head_dim)`` float32, for positions
    ``offset..offset+length-1``, laid out for :func:`apply_rotary`.

    Pair ``i`` (channels ``2i``, ``2i+1``) rotates by ``angle = position * theta^(-2i / head_dim)``:
    ``cos`` holds ``cos(angle)`` at both channels of the pair, ``sin`` holds ``-sin(angle)`` at
    channel ``2i`` and ``+sin(angle)`` at ``2i+1``. Real arithmetic only (no complex dtype: Inductor
    has no complex kernels). Computed in every forward (they are tiny) rather than stored as
    buffers: non-persistent buffers are left uninitialised by ``from_pretrained``.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    positions = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    return cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs ``(a, b) = (x[2i], x[2i+1])`` of ``x (..., head_dim)`` to
    ``(a cos - b sin, a sin + b cos)``, with the tables of :func:`rotary_tables` broadcast to
    ``(..., head_dim)``: ``x * cos + swap_pairs(x) * sin``. Three elementwise kernels (swap, multiply,
    fused multiply-add; measured 2x faster on CPU than computing the two halves and stacking them),
    computed in fp32 and returned in ``x``'s dtype."""
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x32 * cos, swapped, sin).type_as(x)


class DreamerAttention(nn.Module):
    """Space or time attention with GQA, QK-norm, RoPE and an optional logit soft cap.

    The attention itself is the function registered for ``config._attn_implementation``
    (:mod:`.attention`), called with transformers' attention signature.

    Space (``is_time=False``): each frame is one sequence of ``S`` slots; the last
    ``num_agent_tokens`` slots are agent tokens, which read every slot of the frame while no other
    slot reads them (the agent firewall). It is computed as two unmasked attentions (non-agent
    queries over non-agent keys, agent queries over all keys), which is exact and keeps every
    backend's mask-free fast path.

    Time (``is_time=True``): each slot is one causal sequence over the ``T`` frames (the causal
    mask comes from the model, :func:`.attention.time_attention_mask`). Slots never mix, so the
    firewall holds. Examples flagged in ``independent_frames`` attend only to their own frame: a
    softmax over one key is exactly 1, so their output is exactly their own value vector.
    """

    def __init__(self, config: DreamerConfig, is_time: bool, layer_idx: int = 0) -> None:
        super().__init__()
        self.config = config
        self.is_time = is_time
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # read by transformers' functions
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # causality is always an explicit mask, never sdpa's `is_causal`
        self.qkv_proj = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = DreamerRMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = DreamerRMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()

    def forward(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask=None,
        num_agent_tokens: int = 0,
        independent_frames: torch.Tensor | None = None,
        past_key_values: DreamerCache | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor:
        """``hidden (B, T, S, D)``; ``position_embeddings`` RoPE ``(cos, sin)``, each ``(S, Dh)`` (space)
        or ``(T, Dh)`` (time, at the frames' absolute positions); ``attention_mask`` the time layers'
        causal mask over the cached and the new frames (ignored by space layers); ``independent_frames
        (B,) bool`` or None; ``past_key_values``: a time layer reads the cached frames' keys and values
        before the new ones, and with ``use_cache`` stores them all back. Returns ``(B, T, S, D)``."""
        b, t, s, _ = hidden.shape
        h, kv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(hidden).split([h * dh, kv * dh, kv * dh], dim=-1)
        q = self.q_norm(q.view(b, t, s, h, dh))
        k = self.k_norm(k.view(b, t, s, kv, dh))
        v = v.view(b, t, s, kv, dh)
        # Rotate in the (B, T, S, heads, Dh) layout: by slot (space) or by frame (time).
        cos, sin = position_embeddings
        cos, sin = (cos[:, None, None, :], sin[:, None, None, :]) if self.is_time else (cos[:, None, :], sin[:, None, :])
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        softcap = self.config.attn_logit_softcapping or None  # 0 also means "no cap"
        implementation = resolve_attn_implementation(self.config._attn_implementation, hidden.device, softcap)
        check_attn_implementation(implementation, softcap)
        attend = get_attention_function(implementation)
        kwargs = dict(scaling=self.scaling, dropout=0.0, softcap=softcap, is_causal=False)

        if self.is_time:
            # (B, T, S, heads, Dh) -> (B, S, heads, T, Dh): each slot is a sequence over frames.
            q, k, v = (x.permute(0, 2, 3, 1, 4) for x in (q, k, v))
            if past_key_values is not None:
                past = past_key_values.layer(self.layer_idx, s)
                if past is not None:
                    k, v = torch.cat([past[0], k], dim=3), torch.cat([past[1], v], dim=3)
                if use_cache:
                    past_key_values.store(self.layer_idx, k, v)
            frames = k.shape[3]  # cached + new
            # -> (B*S, heads, frames, Dh); output (B*S, T, H, Dh)
            q, k, v = q.reshape(b * s, h, t, dh), k.reshape(b * s, kv, frames, dh), v.reshape(b * s, kv, frames, dh)
            out, _ = attend(self, q, k, v, attention_mask, **kwargs)
            if independent_frames is not None:
                own_value = v[:, :, frames - t :].repeat_interleave(self.num_key_value_groups, dim=1).transpose(1, 2)
                alone = independent_frames.repeat_interleave(s).view(b * s, 1, 1, 1)
                out = torch.where(alone, own_value, out)
            out = out.reshape(b, s, t, h * dh).transpose(1, 2)
        else:
            # (B, T, S, heads, Dh) -> (B*T, heads, S, Dh); output (B*T, S, H, Dh)
            q, k, v = (x.reshape(b * t, s, x.shape[3], dh).transpose(1, 2) for x in (q, k, v))
            split = s - num_agent_tokens
            out, _ = attend(self, q[:, :, :split], k[:, :, :split], v[:, :, :split], None, **kwargs)
            if num_agent_tokens:
                agent_out, _ = attend(self, q[:, :, split:], k, v, None, **kwargs)
                out = torch.cat([out, agent_out], dim=1)
            out = out.reshape(b, t, s, h * dh)
        return self.o_proj(out)


class DreamerBlock(GradientCheckpointingLayer):
    """Pre-RMSNorm attention (space or time) then pre-RMSNorm SwiGLU, both residual."""

    def __init__(self, config: DreamerConfig, layer_idx: int) -> None:
        super().__init__()
        self.is_time = layer_idx in config.time_layer_indices
        self.attn_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = DreamerAttention(config, is_time=self.is_time, layer_idx=layer_idx)
        self.mlp_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamerSwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        hidden: torch.Tensor,
        space_position_embeddings: tuple[torch.Tensor, torch.Tensor],
        time_position_embeddings: tuple[torch.Tensor, torch.Tensor],
        time_attention_mask=None,
        num_agent_tokens: int = 0,
        independent_frames: torch.Tensor | None = None,
        past_key_values: DreamerCache | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor:
        """``hidden (B, T, S, D)`` -> ``(B, T, S, D)``."""
        position_embeddings = time_position_embeddings if self.is_time else space_position_embeddings
        mask = time_attention_mask if self.is_time else None
        attention = self.attn(
            self.attn_norm(hidden), position_embeddings, mask, num_agent_tokens, independent_frames,
            past_key_values=past_key_values, use_cache=use_cache,
        )
        hidden = hidden + attention
        return hidden + self.mlp(self.mlp_norm(hidden))


def run_blocks(
    layers: nn.ModuleList,
    hidden: torch.Tensor,
    config,
    num_readers: int = 0,
    independent_frames: torch.Tensor | None = None,
    cache: DreamerCache | None = None,
    use_cache: bool = False,
) -> torch.Tensor:
    """``hidden (B, T, S, D)`` through a stack of :class:`DreamerBlock`s: RoPE over the slots (space) and over the
    frames' absolute positions (time, continuing ``cache``), the causal time mask over the cached and the new frames
    within ``config.time_context_length``; the last ``num_readers`` slots read every slot and no slot reads them.
    The dynamics model and the tokenizer's encoder and decoder share it."""
    frames, slots = hidden.shape[1], hidden.shape[2]
    offset, cached = (cache.num_frames, cache.cached_frames) if cache is not None else (0, 0)
    space_rope = rotary_tables(slots, config.head_dim, config.rope_theta, hidden.device)
    time_rope = rotary_tables(frames, config.head_dim, config.rope_theta, hidden.device, offset=offset)
    implementation = resolve_attn_implementation(config._attn_implementation, hidden.device, config.attn_logit_softcapping)
    # Queries are the frames fed (absolute positions offset..), keys the cached frames and them.
    time_mask = time_attention_mask(implementation, frames, cached + frames, hidden.device, q_offset=offset,
                                    kv_offset=offset - cached, sliding_window=config.time_context_length)
    for layer in layers:
        hidden = layer(
            hidden,
            space_position_embeddings=space_rope,
            time_position_embeddings=time_rope,
            time_attention_mask=time_mask,
            num_agent_tokens=num_readers,
            independent_frames=independent_frames,
            past_key_values=cache,
            use_cache=use_cache,
        )
    return hidden
