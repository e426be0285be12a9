"""Loss terms of the causal tokenizer (phase 0): plain torch, no model, no pretrained network.

The paper trains its tokenizer on ``MSE + 0.2 LPIPS``, each term normalised by a running RMS estimate (the
training loop's ``LossNormalizer``; this module only computes the raw terms). LPIPS needs pretrained VGG/AlexNet
weights, which cannot be had offline here, so the perceptual term is a stand-in that needs no weights:
:func:`multiscale_gradient_loss`, an L1 distance between image gradients at several scales. It is **not** LPIPS
and does not approximate it numerically; it targets the same failure of an MSE-only autoencoder (blurred edges
and lost fine texture) and is documented as such in docs/tokenizer.md.

Images are channels-first float tensors ``(..., 3, H, W)`` in ``[0, 1]`` (any leading dims, e.g. ``(B, T)``), the
layout of ``DreamerTokenizer.forward``'s ``reconstruction`` when it is given ``(B, T, 3, H, W)`` pixels. All loss math
runs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Weights of the raw terms after RMS normalisation (the paper's 0.2 on its perceptual term).
TOKENIZER_LOSS_WEIGHTS: dict[str, float] = {"reconstruction_mse": 1.0, "perceptual": 0.2}


def _check_images(reconstruction: torch.Tensor, target: torch.Tensor, where: str) -> None:
    if reconstruction.shape != target.shape:
        raise ValueError(f"{where}: reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ")
    if reconstruction.dim() < 3 or reconstruction.shape[-3] != 3:
        raise ValueError(f"{where}: images must be channels-first (..., 3, H, W), got {tuple(reconstruction.shape)}")


def masked_autoencoding_mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel of every patch, masked or not: a scalar (float32).

    Over all patches rather than MAE's masked ones only: at inference nothing is masked, so the reconstruction of
    visible patches is the one that is used, and images drawn with a mask rate near 0 (which the ``U(0, 0.9)`` draw
    includes on purpose) would give a masked-only loss nothing to learn from. Masked patches still dominate the
    error once visible ones are learned, so the model is pushed to infer them from context.
    ``reconstruction``, ``target``: ``(..., 3, H, W)``.
    """
    _check_images(reconstruction, target, "masked_autoencoding_mse")
    return (reconstruction.float() - target.float()).square().mean()


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of ``(N, 3, H, W)``: horizontal ``(N, 3, H, W - 1)`` and vertical ``(N, 3, H - 1, W)``."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def multiscale_gradient_loss(reconstruction: torch.Tensor, target: torch.Tensor, num_scales: int = 3) -> torch.Tensor:
    """The offline perceptual proxy: a scalar (float32) ``>= 0``, 0 for identical images.

    ``mean_s [ mean |dx(R_s) - dx(X_s)| + mean |dy(R_s) - dy(X_s)| ]`` over scales ``s = 0..num_scales-1``, where
    ``R_s``, ``X_s`` are the images average-pooled by ``2^s`` and ``dx``, ``dy`` are forward differences along
    width and height (per RGB channel). Scales smaller than 2x2 pixels are skipped.

    Why this proxy (no pretrained weights exist offline, so no LPIPS): MSE is minimised by the mean of the plausible
    images, a blur, and a blurred edge costs MSE little; LPIPS penalises it through deep features. Comparing image
    gradients puts the cost where blur is: a missing or smeared edge differs in ``dx``/``dy`` by the full edge
    contrast. L1 keeps a constant push on small residual edges (its gradient does not vanish with the error as the
    square's does); the coarser scales compare edges of larger structures, where one pixel of misalignment matters
    less. It is deterministic, has no parameters and works at 32x32. It is blind to a constant brightness offset
    (the MSE term covers that) and, unlike LPIPS, knows nothing of texture statistics or semantics.

    ``reconstruction``, ``target``: ``(..., 3, H, W)``.
    """
    _check_images(reconstruction, target, "multiscale_gradient_loss")
    if num_scales < 1:
        raise ValueError(f"multiscale_gradient_loss: num_scales must be >= 1, got {num_scales}")
    height, width = target.shape[-2:]
    r = reconstruction.float().reshape(-1, 3, height, width)
    x = target.float().reshape(-1, 3, height, width)
    terms = []
    for scale in range(num_scales):
        if min(r.shape[-2:]) < 2:
            break
        (rdx, rdy), (xdx, xdy) = image_gradients(r), image_gradients(x)
        terms.append((rdx - xdx).abs().mean() + (rdy - xdy).abs().mean())
        if scale + 1 < num_scales:
            r, x = F.avg_pool2d(r, 2), F.avg_pool2d(x, 2)
    if not terms:
        raise ValueError(f"multiscale_gradient_loss: images of {height}x{width} pixels have no gradients")
    return torch.stack(terms).mean()


def tokenizer_loss_terms(reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The raw loss terms of one batch, ``{"reconstruction_mse": scalar, "perceptual": scalar}``, to be normalised
    by their running RMS and weighted by :data:`TOKENIZER_LOSS_WEIGHTS`. ``(..., 3, H, W)`` images in [0, 1]."""
    return {
        "reconstruction_mse": masked_autoencoding_mse(reconstruction, target),
        "perceptual": multiscale_gradient_loss(reconstruction, target),
    }
