"""Attention functions of the Dreamer transformer and their dispatch on ``config._attn_implementation``.

Every function has transformers' attention signature (as in Llama and Gemma 2)::

    fn(module, query, key, value, attention_mask, scaling=..., dropout=0.0, softcap=None, **kwargs)
        -> (output (N, Lq, H, Dh), attention weights (N, H, Lq, Lk) or None)

with ``query (N, H, Lq, Dh)`` and ``key``, ``value (N, KV, Lk, Dh)``; ``H`` is a multiple of ``KV``
(grouped-query attention: query head ``h`` reads KV head ``h // (H / KV)``). ``attention_mask`` is
None (every query reads every key), a boolean tensor broadcastable to ``(N, 1, Lq, Lk)`` (True =
may attend), an additive float tensor of that shape, or, for ``flex_attention``, a ``BlockMask``.
Masks are explicit (never ``is_causal``), so that a key/value cache with a sliding causal window
(queries of one frame against keys of several cached frames) uses the same functions.

Implementations (``config._attn_implementation``):

- ``eager``: :func:`eager_attention_forward`, the exact reference of this project.
- ``sdpa``: transformers' ``sdpa_attention_forward``. It cannot apply a logit soft cap; asking for it
  while ``attn_logit_softcapping`` is set raises (:func:`check_attn_implementation`), as transformers'
  own sdpa function does, instead of silently computing attention without the cap.
- ``flex_attention``: :func:`flex_attention_forward`: transformers' function on CUDA (the cap as a
  ``score_mod``, the mask as a ``BlockMask``, the kernel compiled once); elsewhere torch's
  uncompiled ``flex_attention`` (see that function for why).
- ``auto`` (the default when ``attn_implementation`` is not given): chosen per device at run time
  by :func:`resolve_attn_implementation`.

Any other name registered in transformers' ``AttentionInterface`` (e.g. ``flash_attention_2``) is
passed through as transformers would; it receives the ``softcap`` keyword like every function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.utils import is_torch_flex_attn_available

# The value of `config._attn_implementation` when none was asked for: resolved per device.
AUTO_ATTN_IMPLEMENTATION = "auto"

# Implementations that cannot apply a logit soft cap (transformers' sdpa raises on `softcap`).
NO_SOFTCAP_IMPLEMENTATIONS = frozenset({"sdpa"})


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: ``softmax(cap * tanh(scaling * q k^T / cap) + mask) v``, softmax in fp32.

    Shapes as in the module docstring. The queries of one KV group are stacked along the sequence
    axis, so each KV head is read by one matmul without copying K/V (``repeat_kv``); the scale and
    the cap's ``1/cap`` are applied to ``q``, which is ``Lk / Dh`` times smaller than the logits.
    A query whose every key is masked gets NaN (no such row exists in this model).
    """
    n, num_heads, q_len, head_dim = query.shape
    num_kv, k_len = key.shape[1], key.shape[2]
    groups = num_heads // num_kv
    scaling = head_dim**-0.5 if scaling is None else scaling
    q = query * (scaling / (softcap or 1.0))
    logits = q.reshape(n, num_kv, groups * q_len, head_dim) @ key.transpose(-1, -2)
    if softcap:
        logits = torch.tanh(logits) * softcap
    if attention_mask is not None:
        # (N|1, 1, Lq, Lk) -> (N|1, 1, 1, Lq, Lk) against the logits' (N, KV, G, Lq, Lk) view.
        mask = attention_mask[:, :, None]
        logits = logits.view(n, num_kv, groups, q_len, k_len)
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        logits = logits.view(n, num_kv, groups * q_len, k_len)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = (probs @ value).view(n, num_heads, q_len, head_dim)
    return out.transpose(1, 2).contiguous(), probs.view(n, num_heads, q_len, k_len)


def flex_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``flex_attention`` with the soft cap as a ``score_mod`` and the mask as a ``BlockMask``.

    On CUDA this is transformers' ``flex_attention_forward`` (which compiles the flex kernel once,
    or runs it inside the caller's ``torch.compile``). Elsewhere it is torch's ``flex_attention``
    uncompiled: transformers compiles it on every device, and on CPU (measured, torch 2.13) the
    compiled kernel takes ~23 s to build per shape and then runs slower than :func:`eager_attention_forward`,
    while neither form has a backward pass on CPU. Uncompiled flex is exact but materialises the
    scores, so this backend is for checking the GPU path on a CPU, not for CPU training.
    """
    if query.device.type == "cuda":
        out, _ = ALL_ATTENTION_FUNCTIONS["flex_attention"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, softcap=softcap, **kwargs
        )
        return out, None
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, batch_idx, head_idx, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap) if softcap else score

    with warnings.catch_warnings():  # "called without torch.compile": deliberate here, see above
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = flex_attention(
            query, key, value, score_mod=score_mod, block_mask=attention_mask, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    return out.transpose(1, 2).contiguous(), None


# The project's attention functions: a local AttentionInterface instance, so that overriding a name
# here changes nothing for other transformers models (the pattern transformers documents for a
# model that overrides an implementation in its own modeling file). Names not set here fall through
# to transformers' global registry. "sdpa" is transformers' own: the candidate variant that stacks a
# KV group's queries along the sequence (benchmarks/bench_model.py) did not beat it (docs/model.md).
DREAMER_ATTENTION_FUNCTIONS = AttentionInterface()
DREAMER_ATTENTION_FUNCTIONS["eager"] = eager_attention_forward
DREAMER_ATTENTION_FUNCTIONS["flex_attention"] = flex_attention_forward


def get_attention_function(implementation: str) -> Callable:
    """The attention function registered for ``implementation`` (``KeyError`` for an unknown name).

    A plain lookup rather than ``AttentionInterface.get_interface`` (which transformers 5.0 lacks);
    ``eager`` is registered here, so no default is needed."""
    if implementation not in DREAMER_ATTENTION_FUNCTIONS:
        raise KeyError(f"attn_implementation {implementation!r} is not registered in transformers' AttentionInterface")
    return DREAMER_ATTENTION_FUNCTIONS[implementation]


def resolve_attn_implementation(requested: str | None, device: torch.device, softcap: float | None) -> str:
    """The implementation a forward runs: ``requested`` itself, unless it is ``auto`` (or None).

    ``auto`` picks the fastest exact path for the device: on CUDA, ``flex_attention`` when a soft
    cap is configured (the cap as a ``score_mod``, fused) and ``sdpa`` (flash kernels) when not;
    on every other device, ``eager`` with a cap and ``sdpa`` without one (measured on CPU:
    docs/model.md).
    """
    if requested not in (None, AUTO_ATTN_IMPLEMENTATION):
        return requested
    if not softcap:
        return "sdpa"
    if device.type == "cuda" and is_torch_flex_attn_available():
        return "flex_attention"
    return "eager"


def check_attn_implementation(implementation: str | None, softcap: float | None) -> None:
    """Raise ``ValueError`` if ``implementation`` cannot apply the configured logit soft cap."""
    if softcap and implementation in NO_SOFTCAP_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={implementation!r} cannot apply the attention logit soft cap "
            f"(attn_logit_softcapping={softcap}) and would compute different attention. Use 'eager', "
            f"'flex_attention' or 'auto' (the default), or set attn_logit_softcapping=None."
        )


def time_attention_mask(
    implementation: str,
    q_len: int,
    kv_len: int,
    device: torch.device,
    q_offset: int = 0,
    kv_offset: int = 0,
    sliding_window: int | None = None,
):
    """The causal mask of the time layers, in the form ``implementation`` takes.

    Query ``i`` is the frame at position ``q_offset + i``, key ``j`` the frame at ``kv_offset + j``;
    a query reads the keys of its own and earlier frames, at most ``sliding_window`` frames back
    (its own frame included) when a window is given. Returns a ``BlockMask`` for
    ``flex_attention`` (blocks wholly in the future are skipped) and a ``(1, 1, Lq, Lk)`` boolean
    tensor (True = may attend) for every other implementation. The mask functions are transformers'
    (``masking_utils``); its mask builders are not used because their signatures changed within
    transformers 5.x.
    """
    mask_function = causal_mask_function if sliding_window is None else sliding_window_causal_mask_function(sliding_window)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        return mask_function(batch_idx, head_idx, q_idx + q_offset, kv_idx + kv_offset)

    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)
    q_idx = torch.arange(q_len, device=device)[:, None]
    kv_idx = torch.arange(kv_len, device=device)[None, :]
    return mask_mod(None, None, q_idx, kv_idx)[None, None]
