"""The causal tokenizer (phase 0): config checks, shapes, the tanh bottleneck and its reshape, causality in time,
frame-by-frame with a cache, masked autoencoding, save/load and remote code, and its loss terms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from transformers import AutoConfig, AutoModel

from modeling_dreamer import DreamerTokenizer, DreamerTokenizerConfig
from modeling_dreamer.modeling_tokenizer import (
    bottleneck_to_latents,
    draw_patch_mask,
    latents_to_bottleneck,
    patchify,
    unpatchify,
)
from training.tokenizer_objectives import (
    TOKENIZER_LOSS_WEIGHTS,
    masked_autoencoding_mse,
    multiscale_gradient_loss,
    tokenizer_loss_terms,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# 32x32 frames, 8x8 patches (16 per frame), 4 latent tokens of 4 channels -> latents (4, 2, 2); two layers per
# stack, the second a time layer; a 3-frame causal window so that tests run past it.
TINY_FIELDS = dict(
    image_height=32, image_width=32, patch_size=8, hidden_size=32, num_encoder_layers=2, num_decoder_layers=2,
    num_attention_heads=2, num_key_value_heads=1, time_every=2, num_latent_tokens=4, latent_token_dim=4,
    latent_channels=4, latent_height=2, latent_width=2, time_context_length=3,
)


def tiny_tokenizer(seed: int = 0, **overrides) -> DreamerTokenizer:
    torch.manual_seed(seed)
    return DreamerTokenizer(DreamerTokenizerConfig(**{**TINY_FIELDS, **overrides})).eval()


def random_frames(batch: int = 2, frames: int = 5, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), generator=g, dtype=torch.uint8)


def smooth_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(count, 3, size, size)`` in [0, 1]: a colour gradient plus a bright rectangle, different per image."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    images = []
    for _ in range(count):
        colour, direction = torch.rand(3, 1, 1, generator=g), torch.rand(2, generator=g)
        image = colour * (direction[0] * ramp[None, :, None] + direction[1] * ramp[None, None, :]) / 2
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        image[:, top : top + size // 3, left : left + size // 3] = torch.rand(3, 1, 1, generator=g)
        images.append(image.clamp(0, 1))
    return torch.stack(images)


# --- config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(patch_size=5), "patch_size"),
        (dict(num_attention_heads=3), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads 3"),
        (dict(hidden_size=30), "head dim .* = 15 must be even for RoPE"),
        (dict(num_latent_tokens=5), "num_latent_tokens \\* latent_token_dim"),
        (dict(num_latent_tokens=6, latent_token_dim=6, latent_channels=4, latent_height=3, latent_width=3),
         "one must be a multiple"),
        (dict(mask_prob_max=1.0), "mask_prob_max"),
        (dict(time_context_length=0), "time_context_length"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(attn_logit_softcapping=-1.0), "attn_logit_softcapping"),
    ],
)
def test_config_rejects_inconsistent_fields_naming_them(overrides, field):
    with pytest.raises(ValueError, match=f"DreamerTokenizerConfig: .*{field}"):
        DreamerTokenizerConfig(**{**TINY_FIELDS, **overrides})


def test_presets_build_and_tiny_preset_encodes_a_64x64_frame():
    counts = {}
    for name in ("tiny", "small", "medium", "large"):
        config = DreamerTokenizerConfig.from_preset(name)
        channels, height, width = config.latent_shape
        assert config.num_latent_tokens * config.latent_token_dim == channels * height * width
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in DreamerTokenizer(config).parameters())
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]
    assert DreamerTokenizerConfig.from_preset("large").latent_shape == (32, 16, 16)  # the paper's 512 x 16 -> 256 x 32
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        DreamerTokenizerConfig.from_preset("huge")
    torch.manual_seed(0)
    model = DreamerTokenizer(DreamerTokenizerConfig.from_preset("tiny", time_context_length=4)).eval()
    latents = model.encode(random_frames(1, 1, size=64))
    assert latents.shape == (1, 1, 16, 4, 4)
    assert model.decode(latents).shape == (1, 1, 64, 64, 3)


# --- shapes, bottleneck ------------------------------------------------------------------------------------------


def test_encode_decode_shapes_dtypes_and_tanh_range():
    model = tiny_tokenizer()
    frames = random_frames()
    latents = model.encode(frames)
    assert latents.shape == (2, 5, 4, 2, 2) and latents.dtype == torch.float32
    assert latents.abs().max() < 1 and latents.std() > 0
    decoded = model.decode(latents)
    assert decoded.shape == (2, 5, 32, 32, 3) and decoded.dtype == torch.uint8
    # Float paths: channels-first and channels-last inputs give the same latents; the output keeps the layout.
    pixels = frames.permute(0, 1, 4, 2, 3).float() / 255
    out = model(pixels)
    assert torch.allclose(out.latents, latents, atol=1e-6)
    assert out.reconstruction.shape == (2, 5, 3, 32, 32) and out.patch_mask is None
    assert model(frames.float() / 255).reconstruction.shape == (2, 5, 32, 32, 3)
    assert torch.equal(model.decode_pixels(latents), out.reconstruction)
    with pytest.raises(ValueError, match=r"frames must have shape \(B, T, 32, 32, 3\)"):
        model.encode(random_frames(size=16))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, T, 4, 2, 2\)"):
        model.decode(torch.zeros(1, 1, 4, 4, 4))


def test_bottleneck_reshape_rule_places_tokens_as_documented():
    # N_b = H * W, D_b = C: token n is position (n // W, n % W).
    tokens = torch.arange(2 * 3 * 6 * 4, dtype=torch.float32).reshape(2, 3, 6, 4)
    latents = bottleneck_to_latents(tokens, (4, 2, 3))
    assert latents.shape == (2, 3, 4, 2, 3)
    for n in range(6):
        assert torch.equal(latents[:, :, :, n // 3, n % 3], tokens[:, :, n])
    assert torch.equal(latents_to_bottleneck(latents, 6, 4), tokens)
    # The paper's merge: 2 * H * W tokens of C / 2 channels; position k concatenates tokens 2k and 2k + 1.
    tokens = torch.randn(1, 2, 8, 2)
    latents = bottleneck_to_latents(tokens, (4, 2, 2))
    for k in range(4):
        assert torch.equal(latents[:, :, :, k // 2, k % 2], torch.cat([tokens[:, :, 2 * k], tokens[:, :, 2 * k + 1]], -1))
    assert torch.equal(latents_to_bottleneck(latents, 8, 2), tokens)
    model = tiny_tokenizer(num_latent_tokens=8, latent_token_dim=2)
    assert model.encode(random_frames(1, 2)).shape == (1, 2, 4, 2, 2)


# --- causality and the cache ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_a_later_frame_changes_no_earlier_latent_or_reconstruction():
    model = tiny_tokenizer()
    frames = random_frames(frames=6)
    base = model(frames)
    for t in (0, 2, 5):
        changed = frames.clone()
        changed[:, t] = 255 - changed[:, t]
        out = model(changed)
        assert torch.equal(out.latents[:, :t], base.latents[:, :t]), t
        assert torch.equal(out.reconstruction[:, :t], base.reconstruction[:, :t]), t
        assert not torch.allclose(out.latents[:, t], base.latents[:, t]), t
        assert not torch.allclose(out.reconstruction[:, t], base.reconstruction[:, t]), t
    # The decoder alone, too: a later latent changes no earlier decoded frame.
    latents = base.latents.clone()
    latents[:, 3] = -latents[:, 3]
    decoded = model.decode_pixels(latents)
    assert torch.equal(decoded[:, :3], base.reconstruction.permute(0, 1, 4, 2, 3)[:, :3])
    assert not torch.allclose(decoded[:, 3], base.reconstruction.permute(0, 1, 4, 2, 3)[:, 3])


@pytest.mark.parametrize("context", [3, 1, None])
@torch.no_grad()
def test_frame_by_frame_with_the_cache_equals_the_full_pass_past_the_context_window(context):
    model = tiny_tokenizer(time_context_length=context)
    frames = random_frames(frames=8)  # time_context_length 3: the window slides 5 times; 1: each frame alone
    full_latents = model.encode(frames)
    full_pixels = model.decode_pixels(full_latents)
    # One frame at a time, and in uneven chunks.
    for chunks in ([1] * 8, [2, 3, 1, 2]):
        cache, latents, pixels, start = model.new_cache(), [], [], 0
        for size in chunks:
            latents.append(model.encode(frames[:, start : start + size], past_key_values=cache))
            pixels.append(model.decode_pixels(latents[-1], past_key_values=cache))
            start += size
        assert cache.encoder.num_frames == 8 and cache.decoder.num_frames == 8
        assert cache.encoder.cached_frames == (8 if context is None else context - 1)  # all the next frame reads
        torch.testing.assert_close(torch.cat(latents, 1), full_latents, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat(pixels, 1), full_pixels, atol=1e-5, rtol=0)
    # forward with use_cache: the same, both caches in one object.
    out, cache = [], None
    for t in range(8):
        step = model(frames[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = step.past_key_values
        out.append(step.reconstruction)
    torch.testing.assert_close(torch.cat(out, 1), full_pixels.permute(0, 1, 3, 4, 2), atol=1e-5, rtol=0)
    # uint8 decode frame by frame: identical frames (up to a rounding flip on exact .5 boundaries).
    cache = model.new_cache()
    decoded = torch.cat([model.decode(full_latents[:, t : t + 1], past_key_values=cache) for t in range(8)], 1)
    assert (decoded.int() - model.decode(full_latents).int()).abs().max() <= 1


def test_attention_backends_equal_eager():
    """sdpa (exact only without the soft cap, refused with it) and flex_attention (the cap as a score mod; uncompiled
    on CPU, about 2 s here) against the eager reference."""
    frames = random_frames(frames=4)
    for softcap, backends in ((None, ("sdpa",)), (50.0, ("flex_attention",))):
        model = tiny_tokenizer(attn_logit_softcapping=softcap)
        with torch.no_grad():
            model.config._attn_implementation = "eager"
            eager = model(frames)
            for backend in backends:
                model.config._attn_implementation = backend
                out = model(frames)
                torch.testing.assert_close(out.latents, eager.latents, atol=1e-5, rtol=0, msg=backend)
                torch.testing.assert_close(out.reconstruction, eager.reconstruction, atol=1e-5, rtol=0, msg=backend)
    config = DreamerTokenizerConfig(**TINY_FIELDS)
    config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="cannot apply the attention logit soft cap"):
        DreamerTokenizer(config)


# --- masked autoencoding -------------------------------------------------------------------------------------------


def test_mask_rates_are_uniform_on_0_to_mask_prob_max_per_image():
    g = torch.Generator().manual_seed(0)
    mask = draw_patch_mask(500, 8, 1024, 0.9, generator=g)  # 4000 images of 1024 patches
    assert mask.shape == (500, 8, 1024) and mask.dtype == torch.bool
    rates = mask.float().mean(-1).flatten()
    assert abs(rates.mean().item() - 0.45) < 0.02
    assert rates.min() < 0.01 and rates.max() < 0.9 + 0.05
    quartiles = torch.quantile(rates, torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(quartiles, torch.tensor([0.225, 0.45, 0.675]), atol=0.03, rtol=0)
    # Every randomness from the generator: the same seed gives the same mask.
    again = draw_patch_mask(500, 8, 1024, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, mask)


def test_training_forward_draws_the_mask_and_inference_applies_none():
    model = tiny_tokenizer().train()
    frames = random_frames(batch=4, frames=3)
    first = model(frames, generator=torch.Generator().manual_seed(5))
    second = model(frames, generator=torch.Generator().manual_seed(5))
    assert first.patch_mask is not None and first.patch_mask.shape == (4, 3, 16)
    assert torch.equal(first.patch_mask, second.patch_mask) and torch.equal(first.latents, second.latents)
    assert 0 < first.patch_mask.float().mean() < 0.9
    # encode never masks (p = 0, the inference case), whatever the mode; eval-mode forward neither.
    trained_mode = model.encode(frames)
    model.eval()
    assert model(frames).patch_mask is None
    assert torch.equal(model.encode(frames), trained_mode)
    assert torch.equal(model(frames, patch_mask=torch.zeros(4, 3, 16, dtype=torch.bool)).latents, trained_mode)
    # the mask rate is configurable; 0 disables masking in training too.
    assert tiny_tokenizer(mask_prob_max=0.0).train()(frames).patch_mask is None
    with pytest.raises(ValueError, match="patch_mask must be a bool tensor of shape"):
        model(frames, patch_mask=torch.zeros(4, 3, 15, dtype=torch.bool))


@torch.no_grad()
def test_a_masked_patch_is_the_mask_embedding_and_its_pixels_have_no_influence():
    model = tiny_tokenizer()
    frames = random_frames(batch=2, frames=3)
    mask = torch.zeros(2, 3, 16, dtype=torch.bool)
    mask[:, :, [0, 5, 15]] = True
    mask[1, 2] = True  # one image fully masked
    pixels = frames.permute(0, 1, 4, 2, 3).float() / 255
    tokens = model.encoder.embeddings(pixels, mask)
    assert torch.equal(tokens[mask], model.encoder.embeddings.mask_embedding.expand(int(mask.sum()), -1))
    unmasked = model.encoder.embeddings(pixels, None)
    assert torch.equal(tokens[~mask], unmasked[~mask])
    # Scramble the pixels of the masked patches: nothing the model outputs changes.
    base = model(pixels, patch_mask=mask)
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(3))
    in_masked_patch = unpatchify(patchify(torch.ones_like(pixels), 8) * mask[..., None], 8, 32, 32).bool()
    scrambled = torch.where(in_masked_patch, noise, pixels)
    assert not torch.equal(scrambled, pixels)
    out = model(scrambled, patch_mask=mask)
    assert torch.equal(out.latents, base.latents) and torch.equal(out.reconstruction, base.reconstruction)
    # ... while the same change without the mask does change the latents.
    assert not torch.allclose(model(scrambled).latents, model(pixels).latents)


# --- Hugging Face: save/load, auto classes, remote code ----------------------------------------------------------------


@torch.no_grad()
def test_save_and_reload_is_bitwise_and_the_learned_tokens_are_initialised(tmp_path):
    model = tiny_tokenizer()
    for tokens in (model.encoder.latent_tokens, model.decoder.readout_tokens, model.encoder.embeddings.mask_embedding):
        assert 0.01 < tokens.std() < 0.04  # N(0, 0.02) from _init_weights, not zeros and not garbage
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dreamer_tokenizer" and config["architectures"] == ["DreamerTokenizer"]
    assert config["auto_map"] == {"AutoConfig": "configuration_tokenizer.DreamerTokenizerConfig",
                                  "AutoModel": "modeling_tokenizer.DreamerTokenizer"}
    loaded, info = DreamerTokenizer.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert set(state) == set(loaded_state) and all(torch.equal(state[k], loaded_state[k]) for k in state)
    frames = random_frames()
    assert torch.equal(loaded.eval().encode(frames), model.encode(frames))
    assert torch.equal(loaded(frames).reconstruction, model(frames).reconstruction)
    auto, _ = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(auto) is DreamerTokenizer and isinstance(AutoConfig.from_pretrained(tmp_path), DreamerTokenizerConfig)
    assert {k: v for k, v in loaded.config.to_diff_dict().items() if k != "architectures"} == \
        {k: v for k, v in model.config.to_diff_dict().items() if k != "architectures"}
    for name in ("modeling_tokenizer.py", "configuration_tokenizer.py", "layers.py", "attention.py", "cache.py"):
        assert (tmp_path / name).exists(), name


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    import importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in ("modeling_dreamer", "training") or name.startswith(("modeling_dreamer.", "training.")):
                raise ImportError(name + " is blocked in this process")

    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel

    folder = sys.argv[1]
    model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    frames = torch.load(folder + "/frames.pt")
    model.eval()
    latents = model.encode(frames)
    cache = model.new_cache()
    stepwise = torch.cat([model.encode(frames[:, t : t + 1], past_key_values=cache) for t in range(frames.shape[1])], 1)
    torch.save({"latents": latents, "stepwise": stepwise, "decoded": model.decode(latents)}, folder + "/remote_out.pt")
    """
)


@pytest.mark.slow  # a fresh interpreter importing transformers takes ~6 s here
def test_remote_code_loads_offline_without_the_package(tmp_path):
    model = tiny_tokenizer()
    folder = tmp_path / "tokenizer"
    model.save_pretrained(folder)
    frames = random_frames(frames=4)
    torch.save(frames, folder / "frames.pt")
    assert "objectives.py" not in {p.name for p in folder.glob("*.py")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = tmp_path / "remote_load.py"
    script.write_text(REMOTE_LOAD)
    result = subprocess.run([sys.executable, str(script), str(folder)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(folder / "remote_out.pt")
    latents = model.encode(frames)
    assert torch.equal(remote["latents"], latents) and torch.equal(remote["decoded"], model.decode(latents))
    torch.testing.assert_close(remote["stepwise"], latents, atol=1e-5, rtol=0)


# --- loss terms --------------------------------------------------------------------------------------------------------


def test_mse_and_gradient_loss_on_hand_computed_cases():
    target = torch.full((2, 3, 3, 4, 4), 0.5)  # (B, T, 3, H, W)
    assert masked_autoencoding_mse(torch.zeros_like(target), target).item() == pytest.approx(0.25)
    assert masked_autoencoding_mse(target, target).item() == 0.0
    # A vertical step edge against a flat image: at full scale each row has one jump of 1 in 3 differences
    # (mean |dx| = 1/3, dy = 0); pooled to 2x2, one jump of 1 per row (mean 1); 1x1 has no gradients.
    flat = torch.zeros(1, 3, 4, 4)
    edge = flat.clone()
    edge[..., 2:] = 1.0
    assert multiscale_gradient_loss(edge, flat).item() == pytest.approx((1 / 3 + 1) / 2)
    assert multiscale_gradient_loss(edge, flat, num_scales=1).item() == pytest.approx(1 / 3)
    assert multiscale_gradient_loss(edge.transpose(-1, -2), flat).item() == pytest.approx((1 / 3 + 1) / 2)  # dy alike
    # 0 for identical images (and blind to a constant offset, which the MSE term sees); positive otherwise.
    images = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert multiscale_gradient_loss(images, images).item() == 0.0
    assert multiscale_gradient_loss(images + 0.1, images).item() == pytest.approx(0.0, abs=1e-6)
    assert multiscale_gradient_loss(images.roll(1, -1), images) > 0.1
    with pytest.raises(ValueError, match=r"channels-first \(\.\.\., 3, H, W\)"):
        multiscale_gradient_loss(images.permute(0, 1, 3, 4, 2), images.permute(0, 1, 3, 4, 2))
    assert TOKENIZER_LOSS_WEIGHTS == {"reconstruction_mse": 1.0, "perceptual": 0.2}


def test_loss_gradients_reach_the_whole_tokenizer():
    model = tiny_tokenizer().train()
    # Two frames: with one, a time layer's softmax has a single key and its queries and keys get no gradient.
    pixels = smooth_images(4).reshape(2, 2, 3, 32, 32)
    out = model(pixels, generator=torch.Generator().manual_seed(0))
    terms = tokenizer_loss_terms(out.reconstruction, pixels)
    assert set(terms) == {"reconstruction_mse", "perceptual"} and all(v.dim() == 0 and v > 0 for v in terms.values())
    sum(TOKENIZER_LOSS_WEIGHTS[k] * v for k, v in terms.items()).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or (not p.grad.any() and n != "encoder.embeddings.mask_embedding")]
    assert not no_grad, no_grad
    grad_input = torch.rand(1, 3, 8, 8, requires_grad=True)
    multiscale_gradient_loss(grad_input, torch.zeros(1, 3, 8, 8)).backward()
    assert grad_input.grad.abs().sum() > 0


def test_a_few_dozen_adam_steps_reduce_the_reconstruction_loss():
    start = time.perf_counter()
    model = tiny_tokenizer(hidden_size=64, num_attention_heads=4, num_key_value_heads=2).train()
    pixels = smooth_images(6)[:, None]  # (6, 1, 3, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)

    def eval_mse() -> float:
        model.eval()
        with torch.no_grad():
            mse = masked_autoencoding_mse(model(pixels).reconstruction, pixels).item()
        model.train()
        return mse

    before = eval_mse()
    for _ in range(40):
        out = model(pixels, generator=generator)
        terms = tokenizer_loss_terms(out.reconstruction, pixels)
        loss = terms["reconstruction_mse"] + TOKENIZER_LOSS_WEIGHTS["perceptual"] * terms["perceptual"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_mse()
    assert after < 0.4 * before, (before, after)
    assert time.perf_counter() - start < 10
