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

from .configuration_dreamer import DreamerConfig


class DreamerRMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned gain (initialised to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class DreamerSwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; gate and up share one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rotary_tables(length: int, head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """RoPE rotations ``(length, head_dim / 2)`` complex64 for positions ``0..length-1``.

    Computed in every forward (they are tiny) rather than stored as buffers: non-persistent buffers
    are left uninitialised by ``from_pretrained`` (hf_stack_notes.md).
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def rotate_pairs_complex(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs ``(x[2i], x[2i+1])`` of ``x (..., head_dim)`` by ``rotations``
    (complex, broadcastable to ``(..., head_dim / 2)``). One complex multiply instead of the five
    elementwise kernels of the rotate-half form: this is memory-bound work on CPU."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


def rotate_pairs_real(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """:func:`rotate_pairs_complex` in real arithmetic: ``(a cos - b sin, a sin + b cos)``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = rotations.real, rotations.imag
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """RoPE: the complex form in eager mode, the real form under ``torch.compile`` (Inductor has no
    complex kernels and would fall back around them; the real form fuses)."""
    if torch.compiler.is_compiling():
        return rotate_pairs_real(x, rotations)
    return rotate_pairs_complex(x, rotations)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softcap: float | None
) -> torch.Tensor:
    """Reference attention with an optional logit soft cap ``cap * tanh(logits / cap)``.

    ``q (N, H, Lq, Dh)``, ``k`` and ``v (N, KV, Lk, Dh)`` with ``H`` a multiple of ``KV`` (query head
    ``h`` reads KV head ``h // (H / KV)``). Returns ``(N, H, Lq, Dh)``. ``causal`` needs ``Lq == Lk``.
    """
    n, num_heads, q_len, head_dim = q.shape
    num_kv, k_len = k.shape[1], k.shape[2]
    groups = num_heads // num_kv
    # The 1/sqrt(Dh) scale and the cap's 1/cap are applied to q, which is S/Dh times smaller than
    # the logits. The queries sharing a KV head are stacked along the sequence: one matmul per KV
    # head, no copy of K/V.
    scale = head_dim**-0.5 / (softcap or 1.0)
    logits = (q * scale).reshape(n, num_kv, groups * q_len, head_dim) @ k.transpose(-1, -2)
    if softcap is not None:
        logits = torch.tanh(logits) * softcap
    if causal:
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.view(n, num_kv, groups, q_len, k_len).masked_fill(future, float("-inf"))
        logits = logits.view(n, num_kv, groups * q_len, k_len)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)
    return (probs @ v).view(n, num_heads, q_len, head_dim)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """PyTorch's fused attention, same shapes and head grouping as :func:`eager_attention` (no soft cap)."""
    n, num_heads, q_len, head_dim = q.shape
    num_kv = k.shape[1]
    if causal:
        # Time sequences are short (T frames), so repeating K/V is cheap; `enable_gqa` is avoided
        # because torch's FLOP counter rejects it on CUDA.
        groups = num_heads // num_kv
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # Without a mask every query is independent: stacking a KV group's queries along the sequence
    # is exact and lets the fused kernel run on the un-repeated K/V.
    q = q.reshape(n, num_kv, (num_heads // num_kv) * q_len, head_dim)
    return F.scaled_dot_product_attention(q, k, v).reshape(n, num_heads, q_len, head_dim)


def flex_attention_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softcap: float | None
) -> torch.Tensor:
    """``torch.nn.attention.flex_attention`` with the soft cap and the causal mask as a score
    modification; same shapes and head grouping as :func:`eager_attention`.

    Fused when the caller runs under ``torch.compile`` (GPU); uncompiled, PyTorch runs its unfused
    reference, which is exact but slow.
    """
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score: torch.Tensor, batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor,
                  kv_idx: torch.Tensor) -> torch.Tensor:
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if causal:
            score = torch.where(q_idx >= kv_idx, score, -float("inf"))
        return score

    return flex_attention(q, k, v, score_mod=score_mod, enable_gqa=q.shape[1] != k.shape[1])


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softcap: float | None, implementation: str
) -> torch.Tensor:
    """Dispatch on ``attn_implementation``: ``flex_attention`` applies the cap as a score
    modification; sdpa cannot apply a soft cap, so with a cap configured it runs the exact eager
    math (correctness over speed; see docs/model.md)."""
    softcap = softcap or None  # 0 means "no cap", also when set on a config after construction
    if implementation == "flex_attention":
        return flex_attention_backend(q, k, v, causal, softcap)
    if implementation == "sdpa" and softcap is None:
        return sdpa_attention(q, k, v, causal)
    return eager_attention(q, k, v, causal, softcap)


class DreamerAttention(nn.Module):
    """Space or time attention with GQA, QK-norm, RoPE and an optional logit soft cap.

    Space (``is_time=False``): each frame is one sequence of ``S`` slots; the last
    ``num_agent_tokens`` slots are agent tokens, which read every slot of the frame while no other
    slot reads them (the agent firewall). It is computed as two unmasked attentions (non-agent
    queries over non-agent keys, agent queries over all keys), which is exact and keeps the fused
    kernel's mask-free fast path.

    Time (``is_time=True``): each slot is one causal sequence over the ``T`` frames. Slots never
    mix, so the firewall holds. Examples flagged in ``independent_frames`` attend only to their own
    frame: a softmax over one key is exactly 1, so their output is exactly their own value vector.
    """

    def __init__(self, config: DreamerConfig, is_time: bool) -> None:
        super().__init__()
        self.config = config
        self.is_time = is_time
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = DreamerRMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = DreamerRMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()

    def forward(
        self,
        hidden: torch.Tensor,
        rope: torch.Tensor,
        num_agent_tokens: int,
        independent_frames: torch.Tensor | None,
    ) -> torch.Tensor:
        """``hidden (B, T, S, D)``; ``rope`` rotations ``(S, Dh/2)`` (space) or ``(T, Dh/2)`` (time);
        ``independent_frames (B,) bool`` or None. Returns ``(B, T, S, D)``."""
        b, t, s, _ = hidden.shape
        h, kv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(hidden).split([h * dh, kv * dh, kv * dh], dim=-1)
        q = self.q_norm(q.view(b, t, s, h, dh))
        k = self.k_norm(k.view(b, t, s, kv, dh))
        v = v.view(b, t, s, kv, dh)
        softcap = self.config.attn_logit_softcap
        implementation = self.config._attn_implementation
        # Rotate in the (B, T, S, heads, Dh) layout: by slot (space) or by frame (time).
        rotations = rope[:, None, None, :] if self.is_time else rope[:, None, :]
        q, k = apply_rotary(q, rotations), apply_rotary(k, rotations)

        if self.is_time:
            # (B, T, S, heads, Dh) -> (B*S, heads, T, Dh)
            q, k, v = (x.permute(0, 2, 3, 1, 4).reshape(b * s, x.shape[3], t, dh) for x in (q, k, v))
            out = attention(q, k, v, True, softcap, implementation)
            if independent_frames is not None:
                own_value = v.repeat_interleave(h // kv, dim=1)
                alone = independent_frames.repeat_interleave(s).view(b * s, 1, 1, 1)
                out = torch.where(alone, own_value, out)
            out = out.view(b, s, h, t, dh).permute(0, 3, 1, 2, 4)
        else:
            # (B, T, S, heads, Dh) -> (B*T, heads, S, Dh)
            q, k, v = (x.reshape(b * t, s, x.shape[3], dh).transpose(1, 2) for x in (q, k, v))
            split = s - num_agent_tokens
            out = attention(q[:, :, :split], k[:, :, :split], v[:, :, :split], False, softcap, implementation)
            if num_agent_tokens:
                agent_out = attention(q[:, :, split:], k, v, False, softcap, implementation)
                out = torch.cat([out, agent_out], dim=2)
            out = out.transpose(1, 2).reshape(b, t, s, h, dh)
        return self.o_proj(out.reshape(b, t, s, h * dh))


class DreamerBlock(GradientCheckpointingLayer):
    """Pre-RMSNorm attention (space or time) then pre-RMSNorm SwiGLU, both residual."""

    def __init__(self, config: DreamerConfig, layer_idx: int) -> None:
        super().__init__()
        self.is_time = layer_idx in config.time_layer_indices
        self.attn_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = DreamerAttention(config, is_time=self.is_time)
        self.mlp_norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamerSwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        hidden: torch.Tensor,
        space_rope: torch.Tensor,
        time_rope: torch.Tensor,
        num_agent_tokens: int = 0,
        independent_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden (B, T, S, D)`` -> ``(B, T, S, D)``."""
        rope = time_rope if self.is_time else space_rope
        hidden = hidden + self.attn(self.attn_norm(hidden), rope, num_agent_tokens, independent_frames)
        return hidden + self.mlp(self.mlp_norm(hidden))
