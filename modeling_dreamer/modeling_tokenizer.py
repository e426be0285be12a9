"""DreamerV4 causal tokenizer (phase 0): RGB frames <-> the latents ``(C, H, W)`` the dynamics model reads.

One frame is a set of tokens that go through the dynamics' efficient transformer (:class:`DreamerBlock`:
space attention within a frame, causal time attention every ``time_every`` layers). Token layout of a frame:

    encoder: [ patch tokens (N_p) | latent tokens (N_b) ]      latent tokens read every slot, patches only patches
    decoder: [ latent tokens (N_b) | read-out tokens (N_p) ]   read-out tokens read every slot, latents only latents

Both are :class:`DreamerAttention`'s firewall ("the last ``k`` slots read every slot of the frame, no other slot
reads them"), with ``k = N_b`` in the encoder and ``k = N_p`` in the decoder. Time layers attend per slot along
frames, causally, within a sliding window of ``time_context_length`` frames, so a later frame changes no earlier
latent or reconstruction, and frames can be encoded and decoded one at a time with a cache (docs/tokenizer.md).

Pixels: ``uint8`` frames ``(B, T, H, W, 3)`` for :meth:`DreamerTokenizer.encode` / :meth:`DreamerTokenizer.decode`;
floats in ``[0, 1]`` for the differentiable paths (``forward``, ``encode_pixels``, ``decode_pixels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .cache import DreamerCache
from .configuration_tokenizer import DreamerTokenizerConfig
from .layers import DreamerBlock, DreamerRMSNorm, run_blocks
from .pretrained import DreamerPreTrainedMixin


@dataclass
class DreamerTokenizerCache:
    """The time-layer caches of a stream of frames: one :class:`DreamerCache` for the encoder, one for the
    decoder (their layers are numbered separately, and a stream may be encoded without being decoded)."""

    encoder: DreamerCache
    decoder: DreamerCache

    @classmethod
    def empty(cls, context_length: int | None) -> "DreamerTokenizerCache":
        return cls(DreamerCache(context_length), DreamerCache(context_length))


@dataclass
class DreamerTokenizerOutput(ModelOutput):
    """Outputs of :meth:`DreamerTokenizer.forward`.

    ``latents (B, T, C, H, W)``: the bottleneck in the dynamics' shape, in ``(-1, 1)``.
    ``reconstruction``: the decoded frames, float (``[0, 1]`` when well trained, not clamped), in the layout of the
    input (``(B, T, 3, H, W)`` or ``(B, T, H, W, 3)``).
    ``patch_mask (B, T, N_p)`` bool: the patches that were replaced by the mask embedding (None: none were).
    ``cache`` (also readable as ``past_key_values``): the :class:`DreamerTokenizerCache` the call read or filled.
    """

    latents: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    patch_mask: torch.Tensor | None = None
    cache: DreamerTokenizerCache | None = None

    @property
    def past_key_values(self) -> DreamerTokenizerCache | None:
        # As DreamerModelOutput: recent transformers rename an output field `past_key_values` to `cache`.
        return self.cache


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, T, 3, H, W)`` -> ``(B, T, N_p, 3 * p * p)``: patches in row-major order, each patch's values
    ordered (channel, row, column)."""
    b, t, c, height, width = pixels.shape
    p = patch_size
    x = pixels.reshape(b, t, c, height // p, p, width // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, t, (height // p) * (width // p), c * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """``(B, T, N_p, 3 * p * p)`` -> ``(B, T, 3, H, W)``; the inverse of :func:`patchify`."""
    b, t = patches.shape[:2]
    p = patch_size
    x = patches.reshape(b, t, height // p, width // p, -1, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, t, -1, height, width)


def bottleneck_to_latents(bottleneck: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """``(B, T, N_b, D_b)`` -> ``(B, T, C, H, W)``: the frame's ``N_b * D_b`` values, token by token, regrouped
    into ``H * W`` row-major positions of ``C`` channels: ``latents[..., c, i, j] = flat[(i * W + j) * C + c]``
    (``N_b = H * W``, ``D_b = C``: token ``n`` is position ``(n // W, n % W)``; ``C = 2 D_b``: position ``k``
    concatenates tokens ``2k`` and ``2k + 1``)."""
    b, t = bottleneck.shape[:2]
    c, h, w = latent_shape
    return bottleneck.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).contiguous()


def latents_to_bottleneck(latents: torch.Tensor, num_tokens: int, token_dim: int) -> torch.Tensor:
    """``(B, T, C, H, W)`` -> ``(B, T, N_b, D_b)``; the inverse of :func:`bottleneck_to_latents`."""
    b, t = latents.shape[:2]
    return latents.permute(0, 1, 3, 4, 2).reshape(b, t, num_tokens, token_dim)


def draw_patch_mask(
    batch: int,
    frames: int,
    num_patches: int,
    mask_prob_max: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The masked-autoencoding mask ``(B, T, N_p)`` bool, True = masked: per image (frame of an example) a rate
    ``p ~ U(0, mask_prob_max)``, then each patch is masked with probability ``p``, independently.

    All randomness comes from ``generator`` (on its device; the mask is then moved to ``device``), or from torch's
    global generator on ``device`` when None. Rates near 0, the inference case, are drawn as often as any other.
    """
    draw_device = generator.device if generator is not None else device
    rate = torch.rand(batch, frames, 1, generator=generator, device=draw_device) * mask_prob_max
    mask = torch.rand(batch, frames, num_patches, generator=generator, device=draw_device) < rate
    return mask.to(device) if device is not None else mask


def slot_membership(num_patches: int, num_latents: int, device: Any = None, dtype: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``slot_residuals``' fixed mixing matrices: ``(to_latents (N_b, N_p), to_readouts (N_p, N_b))``, the rows
    averaging the patch tokens a latent token covers and the latent tokens covering a patch. Patches in row-major
    order: with ``N_p >= N_b`` patch ``i`` belongs to latent ``i * N_b // N_p`` (contiguous runs); with fewer
    patches, latent ``k`` covers patch ``k * N_p // N_b``."""
    membership = torch.zeros(num_latents, num_patches, device=device, dtype=dtype)
    if num_patches >= num_latents:
        membership[torch.arange(num_patches) * num_latents // num_patches, torch.arange(num_patches)] = 1
    else:
        membership[torch.arange(num_latents), torch.arange(num_latents) * num_patches // num_latents] = 1
    return membership / membership.sum(1, keepdim=True), membership.t() / membership.t().sum(1, keepdim=True)


class DreamerTokenizerPatchEmbeddings(nn.Module):
    """Pixels -> patch tokens: a linear embedding of each ``p x p`` patch; a masked patch's token is the learned
    ``mask_embedding`` instead (its pixels are not read)."""

    def __init__(self, config: DreamerTokenizerConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Linear(config.patch_dim, config.hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``pixel_values (B, T, 3, H, W)`` in [0, 1], ``patch_mask (B, T, N_p)`` bool or None -> ``(B, T, N_p, D)``."""
        tokens = self.proj(patchify(pixel_values * 2.0 - 1.0, self.patch_size))  # centred input
        if patch_mask is not None:
            tokens = torch.where(patch_mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        return tokens


class DreamerTokenizerTransformer(nn.Module):
    """A stack of :class:`DreamerBlock`\\ s and a final RMSNorm, over tokens ``(B, T, S, D)``.

    The last ``num_readers`` slots of a frame read every slot, no other slot reads them (space layers); time layers
    are causal per slot within the sliding window. With a cache, the frames fed continue the cached ones (at the
    next absolute frame positions); ``use_cache`` appends them to it.
    """

    def __init__(self, config: DreamerTokenizerConfig, num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([DreamerBlock(config, i) for i in range(num_layers)])
        self.norm = DreamerRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, hidden: torch.Tensor, num_readers: int, cache: DreamerCache | None = None, use_cache: bool = False
    ) -> torch.Tensor:
        """``hidden (B, T, S, D)`` -> normalised ``(B, T, S, D)``."""
        # The firewall: the last `num_readers` slots read all, nothing reads them.
        hidden = run_blocks(self.layers, hidden, self.config, num_readers, cache=cache, use_cache=use_cache)
        if use_cache:
            cache.advance(hidden.shape[1], None, None)
        return self.norm(hidden)


class DreamerTokenizerEncoder(nn.Module):
    """Pixels -> bottleneck: patch tokens and learned latent tokens through the transformer; the latent tokens'
    outputs are read out linearly to ``latent_token_dim`` channels and squashed by ``tanh``."""

    def __init__(self, config: DreamerTokenizerConfig) -> None:
        super().__init__()
        self.embeddings = DreamerTokenizerPatchEmbeddings(config)
        self.latent_tokens = nn.Parameter(torch.zeros(config.num_latent_tokens, config.hidden_size))
        self.transformer = DreamerTokenizerTransformer(config, config.num_encoder_layers)
        self.to_bottleneck = nn.Linear(config.hidden_size, config.latent_token_dim)
        self.slot_residuals = config.slot_residuals

    def forward(
        self,
        pixel_values: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
        cache: DreamerCache | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor:
        """``pixel_values (B, T, 3, H, W)`` in [0, 1] -> bottleneck ``(B, T, N_b, D_b)`` in (-1, 1)."""
        patches = self.embeddings(pixel_values, patch_mask)
        b, t = patches.shape[:2]
        latents = self.latent_tokens.to(patches.dtype).expand(b, t, -1, -1)
        num_latent = latents.shape[2]
        if self.slot_residuals:  # each latent token starts from the patches it covers (config docstring)
            to_latents, _ = slot_membership(patches.shape[2], num_latent, patches.device, patches.dtype)
            latents = latents + torch.einsum("kp,btpd->btkd", to_latents, patches)
        hidden = self.transformer(torch.cat([patches, latents], dim=2), num_latent, cache, use_cache)
        return torch.tanh(self.to_bottleneck(hidden[:, :, -num_latent:]))


class DreamerTokenizerDecoder(nn.Module):
    """Bottleneck -> pixels: the latents projected back to the model width, and learned read-out tokens (one per
    patch) through the transformer; a linear head maps each read-out token to its patch's pixels."""

    def __init__(self, config: DreamerTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.from_bottleneck = nn.Linear(config.latent_token_dim, config.hidden_size)
        self.readout_tokens = nn.Parameter(torch.zeros(config.num_patches, config.hidden_size))
        self.transformer = DreamerTokenizerTransformer(config, config.num_decoder_layers)
        self.patch_head = nn.Linear(config.hidden_size, config.patch_dim)

    def forward(
        self, bottleneck: torch.Tensor, cache: DreamerCache | None = None, use_cache: bool = False
    ) -> torch.Tensor:
        """``bottleneck (B, T, N_b, D_b)`` -> pixels ``(B, T, 3, H, W)`` (``[0, 1]`` when trained, not clamped)."""
        c = self.config
        latents = self.from_bottleneck(bottleneck)
        b, t = latents.shape[:2]
        readout = self.readout_tokens.to(latents.dtype).expand(b, t, -1, -1)
        if c.slot_residuals:  # each read-out token starts from the latent tokens covering its patch
            _, to_readouts = slot_membership(c.num_patches, latents.shape[2], latents.device, latents.dtype)
            readout = readout + torch.einsum("pk,btkd->btpd", to_readouts, latents)
        hidden = self.transformer(torch.cat([latents, readout], dim=2), c.num_patches, cache, use_cache)
        patches = self.patch_head(hidden[:, :, -c.num_patches :])
        # The head predicts centred values (mid-grey = 0, as the encoder's input), mapped back to [0, 1].
        return unpatchify(patches, c.patch_size, c.image_height, c.image_width) * 0.5 + 0.5


class DreamerTokenizerPreTrainedModel(DreamerPreTrainedMixin, PreTrainedModel):
    config_class = DreamerTokenizerConfig
    base_model_prefix = "tokenizer"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamerBlock"]  # also the default FSDP wrap classes
    _supports_sdpa = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear: N(0, initializer_range), biases 0; RMSNorm gains 1 (base class); the learned tokens and the mask
        embedding likewise N(0, initializer_range). Only ``transformers.initialization`` functions, which skip
        tensors loaded from a checkpoint."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DreamerTokenizerPatchEmbeddings):
            init.normal_(module.mask_embedding, std=std)
        elif isinstance(module, DreamerTokenizerEncoder):
            init.normal_(module.latent_tokens, std=std)
        elif isinstance(module, DreamerTokenizerDecoder):
            init.normal_(module.readout_tokens, std=std)


class DreamerTokenizer(DreamerTokenizerPreTrainedModel):
    """The causal tokenizer: frames ``(B, T, H, W, 3)`` uint8 <-> latents ``(B, T, C, H, W)`` in (-1, 1).

    Inference: :meth:`encode` and :meth:`decode` (no mask, no gradient); with a :class:`DreamerTokenizerCache`
    (:meth:`new_cache`) they take one frame (or a few) at a time and equal the full pass. Training: :meth:`forward`
    (masked autoencoding while ``self.training``), its loss terms in ``training/tokenizer_objectives.py``.
    """

    def __init__(self, config: DreamerTokenizerConfig) -> None:
        super().__init__(config)
        self.encoder = DreamerTokenizerEncoder(config)
        self.decoder = DreamerTokenizerDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (there is no vocabulary: not an ``nn.Embedding``)."""
        return self.encoder.embeddings

    def new_cache(self) -> DreamerTokenizerCache:
        """An empty cache for a stream of frames, with this model's ``time_context_length``."""
        return DreamerTokenizerCache.empty(self.config.time_context_length)

    # -- inputs --------------------------------------------------------------------------------------------------

    def _pixel_values(self, frames: torch.Tensor, where: str) -> tuple[torch.Tensor, bool]:
        """Frames ``(B, T, H, W, 3)`` or ``(B, T, 3, H, W)``, uint8 (0..255) or float ([0, 1]) -> float pixel values
        ``(B, T, 3, H, W)`` in the model's dtype and whether the input was channels-last."""
        h, w = self.config.image_height, self.config.image_width
        if frames.dim() == 5 and tuple(frames.shape[2:]) == (h, w, 3):
            channels_last = True
            frames = frames.permute(0, 1, 4, 2, 3)
        elif frames.dim() == 5 and tuple(frames.shape[2:]) == (3, h, w):
            channels_last = False
        else:
            raise ValueError(f"{where}: frames must have shape (B, T, {h}, {w}, 3) or (B, T, 3, {h}, {w}), "
                             f"got {tuple(frames.shape)}")
        frames = frames.to(self.device)  # before the cast: uint8 moves a quarter of the bytes of float32
        if frames.dtype == torch.uint8:
            pixels = frames.to(self.dtype) / 255.0
        elif frames.is_floating_point():
            pixels = frames.to(self.dtype)
        else:
            raise ValueError(f"{where}: frames must be uint8 (0..255) or float (0..1), got {frames.dtype}")
        return pixels, channels_last

    def _bottleneck(self, latents: torch.Tensor, where: str) -> torch.Tensor:
        """Latents ``(B, T, C, H, W)`` -> bottleneck ``(B, T, N_b, D_b)`` in the model's dtype."""
        c = self.config
        if latents.dim() != 5 or tuple(latents.shape[2:]) != c.latent_shape:
            raise ValueError(f"{where}: latents must have shape (B, T, {', '.join(map(str, c.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        latents = latents.to(device=self.device, dtype=self.dtype)
        return latents_to_bottleneck(latents, c.num_latent_tokens, c.latent_token_dim)

    def draw_patch_mask(self, batch: int, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A masked-autoencoding mask ``(B, T, N_p)`` bool on the model's device (:func:`draw_patch_mask` with
        this model's ``num_patches`` and ``mask_prob_max``)."""
        c = self.config
        return draw_patch_mask(batch, frames, c.num_patches, c.mask_prob_max, generator, self.device)

    # -- training ------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        past_key_values: DreamerTokenizerCache | None = None,
        use_cache: bool = False,
    ) -> DreamerTokenizerOutput:
        """Encode and decode (masked autoencoding in training).

        Args:
            pixel_values: ``(B, T, 3, H, W)`` or ``(B, T, H, W, 3)``, float in [0, 1] (uint8 0..255 is accepted).
            patch_mask: ``(B, T, N_p)`` bool, True = replace that patch's token by the mask embedding. None: in
                training mode one is drawn (:meth:`draw_patch_mask`, from ``generator``); in eval mode none.
            generator: the source of the drawn mask (None: torch's global generator).
            past_key_values: a :class:`DreamerTokenizerCache` of earlier frames, which the frames fed continue
                (read only, unless ``use_cache``).
            use_cache: append the frames fed to ``past_key_values`` (a new cache when None).
        Returns:
            :class:`DreamerTokenizerOutput`: ``latents (B, T, C, H, W)``, ``reconstruction`` in the input's
            layout, the ``patch_mask`` applied and the cache.
        """
        pixels, channels_last = self._pixel_values(pixel_values, f"{type(self).__name__}.forward")
        b, t = pixels.shape[:2]
        if patch_mask is None and self.training and self.config.mask_prob_max > 0:
            patch_mask = self.draw_patch_mask(b, t, generator)
        if patch_mask is not None:
            expected = (b, t, self.config.num_patches)
            if tuple(patch_mask.shape) != expected or patch_mask.dtype != torch.bool:
                raise ValueError(f"{type(self).__name__}.forward: patch_mask must be a bool tensor of shape {expected}, "
                                 f"got {patch_mask.dtype} {tuple(patch_mask.shape)}")
            patch_mask = patch_mask.to(pixels.device)
        cache = self.new_cache() if use_cache and past_key_values is None else past_key_values
        bottleneck = self.encoder(pixels, patch_mask, cache.encoder if cache is not None else None, use_cache)
        reconstruction = self.decoder(bottleneck, cache.decoder if cache is not None else None, use_cache)
        if channels_last:
            reconstruction = reconstruction.permute(0, 1, 3, 4, 2)
        return DreamerTokenizerOutput(
            latents=bottleneck_to_latents(bottleneck, self.config.latent_shape),
            reconstruction=reconstruction,
            patch_mask=patch_mask,
            cache=cache,
        )

    # -- inference -----------------------------------------------------------------------------------------------

    def encode_pixels(
        self, pixel_values: torch.Tensor, past_key_values: DreamerTokenizerCache | None = None
    ) -> torch.Tensor:
        """Float (differentiable) encoding, never masked: ``pixel_values`` as in :meth:`forward` -> latents
        ``(B, T, C, H, W)`` in (-1, 1). With ``past_key_values`` the frames continue it and are appended to it."""
        pixels, _ = self._pixel_values(pixel_values, f"{type(self).__name__}.encode")
        use_cache = past_key_values is not None
        bottleneck = self.encoder(pixels, None, past_key_values.encoder if use_cache else None, use_cache)
        return bottleneck_to_latents(bottleneck, self.config.latent_shape)

    def decode_pixels(self, latents: torch.Tensor, past_key_values: DreamerTokenizerCache | None = None) -> torch.Tensor:
        """Float (differentiable) decoding: latents ``(B, T, C, H, W)`` -> pixel values ``(B, T, 3, H, W)``
        (``[0, 1]`` when trained, not clamped). With ``past_key_values`` the frames continue it and are appended."""
        bottleneck = self._bottleneck(latents, f"{type(self).__name__}.decode")
        use_cache = past_key_values is not None
        return self.decoder(bottleneck, past_key_values.decoder if use_cache else None, use_cache)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, past_key_values: DreamerTokenizerCache | None = None) -> torch.Tensor:
        """Frames ``(B, T, H, W, 3)`` uint8 -> latents ``(B, T, C, H, W)`` float in (-1, 1) (the model's dtype).

        No mask is applied (the inference case ``p = 0``), in any mode. With ``past_key_values`` (from
        :meth:`new_cache`) the frames continue the stream it holds and are appended to it, so a live agent encodes
        one frame at a time: frame-by-frame equals one call over all frames. Float frames in [0, 1] and the
        ``(B, T, 3, H, W)`` layout are accepted too.
        """
        return self.encode_pixels(frames, past_key_values)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, past_key_values: DreamerTokenizerCache | None = None) -> torch.Tensor:
        """Latents ``(B, T, C, H, W)`` -> frames ``(B, T, H, W, 3)`` uint8 (rounded, clamped to 0..255). Causal in
        time like :meth:`encode` (decoding uses ``past_key_values.decoder``, appended to)."""
        pixels = self.decode_pixels(latents, past_key_values)
        frames = (pixels.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return frames.permute(0, 1, 3, 4, 2).contiguous()
