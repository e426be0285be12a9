"""Stage `tokenizer` (DreamerV4 phase 0): train the causal tokenizer on recorded frames.

The dataset is a recording of `python -m envs.record` (`--dataset_path` names its folder): clips of
`window_length` consecutive frames inside one episode, drawn in a fresh seeded permutation each epoch (the
mixture sampler with no reward-relevant draws). Per micro-batch, masked autoencoding: each image's patches are
replaced by the learned mask embedding with probability `p ~ U(0, mask_prob_max)` drawn per image, and two loss
terms, each normalised by its running RMS in the loop: `reconstruction_mse` and `perceptual` (an offline
stand-in for LPIPS, weight 0.2; training/tokenizer_objectives.py). Held-out episodes are scored by the PSNR of
their reconstructions beside a baseline that keeps as many numbers per frame as the latent does (an
area-downsampled image, upsampled back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modeling_dreamer.errors import ArgumentError, DataError, RunError
from training.data import RunData
from training.stages.base import Evaluation, Stage, StepLosses, model_kwargs
from training.stages.dynamics import gather_records


@dataclass
class TokenizerArguments:
    """Knobs of tokenizer training."""

    validation_episode_fraction: float = field(
        default=0.1, metadata={"help": "Share of the recording's episodes held out for evaluation (whole episodes)."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_episode_fraction < 1.0:
            raise ArgumentError(f"validation_episode_fraction must be in [0, 1), got {self.validation_episode_fraction}")


class FrameClips(torch.utils.data.Dataset):
    """Clips of `length` consecutive frames of one episode: `clips[i]` (or `clips[(i, source)]`, as the mixture
    sampler draws) is `{"frames": (T, H, W, 3) uint8, "window_index": i, "source": source}`."""

    def __init__(self, frames: np.ndarray, episodes: np.ndarray, length: int, stride: int) -> None:
        self.frames, self.length = frames, length
        starts = []
        for episode in np.unique(episodes):
            rows = np.flatnonzero(episodes == episode)
            starts.extend(range(int(rows[0]), int(rows[-1]) - length + 2, stride))
        self.starts = np.asarray(starts, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, source = key if isinstance(key, tuple) else (key, 0)
        start = int(self.starts[index])
        return {"frames": self.frames[start : start + self.length], "window_index": int(index), "source": int(source)}


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "frames": torch.from_numpy(np.stack([item["frames"] for item in items])),
        "window_index": torch.tensor([item["window_index"] for item in items]),
        "source": torch.tensor([item["source"] for item in items]),
        "sources": tuple(item["source"] for item in items),
    }


@dataclass
class RecordingSchema:
    """What the tokenizer's data fixes: the frame size, and the recording's metadata."""

    frame_size: tuple[int, int]
    metadata: dict[str, Any]


class RecordingData(RunData):
    def summary(self) -> dict[str, Any]:
        meta = self.schema.metadata
        return {"name": self.description["name"], "lines": [
            f"recording of `{meta.get('env_id')}` ({meta.get('policy')}): {self.description['train_frames']:,} training "
            f"frames in {self.description['train_episodes']} episodes, {self.description['validation_frames']:,} "
            f"held-out frames in {self.description['validation_episodes']} episodes",
            f"frames: {self.schema.frame_size[0]} x {self.schema.frame_size[1]} RGB",
        ]}


def load_recording_clips(args: Any, world_size: int, validation_fraction: float) -> RecordingData:
    """The recording's frames in memory, split by whole episodes (seeded), as clips of `window_length`."""
    from torch.utils.data import DataLoader, Subset

    from data.sampler import MixtureSampler
    from envs.recording import read_frames

    d, t = args.data, args.training
    try:
        frames, columns, metadata = read_frames(d.dataset_path)
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"dataset_path {d.dataset_path}: {error} (stage tokenizer trains on a recording of "
                       "`python -m envs.record`)") from None
    if len(frames) == 0:
        raise DataError(f"{d.dataset_path}: the recording holds no frame")
    episodes = np.unique(columns["episode"])
    held_out = max(1, round(validation_fraction * len(episodes))) if validation_fraction > 0 and len(episodes) > 1 else 0
    validation = set(np.random.default_rng(t.seed).permutation(episodes)[:held_out].tolist())
    in_validation = np.isin(columns["episode"], list(validation))
    stride = d.window_stride or d.window_length
    train = FrameClips(frames[~in_validation], columns["episode"][~in_validation], d.window_length, stride)
    if len(train) == 0:
        raise RunError(f"{d.dataset_path}: no training episode holds {d.window_length} frames (window_length)")
    sampler = MixtureSampler(len(train), [], 0.0, seed=t.seed)
    train_loader = DataLoader(train, batch_size=t.per_device_train_batch_size, sampler=sampler, collate_fn=collate_clips,
                              drop_last=True, num_workers=d.dataloader_num_workers)
    eval_loader = None
    if validation:
        held = FrameClips(frames[in_validation], columns["episode"][in_validation], d.window_length, d.window_length)
        if d.max_eval_windows is not None and len(held) > d.max_eval_windows:
            held = Subset(held, range(d.max_eval_windows))
        if len(held):
            eval_loader = DataLoader(held, batch_size=t.per_device_eval_batch_size, collate_fn=collate_clips)
    description = {"name": Path(d.dataset_path).name, "frames": int(len(frames)), "windows": len(train),
                   "window_length": d.window_length, "train_frames": int((~in_validation).sum()),
                   "validation_frames": int(in_validation.sum()), "train_episodes": len(episodes) - len(validation),
                   "validation_episodes": len(validation)}
    schema = RecordingSchema(frame_size=(int(frames.shape[1]), int(frames.shape[2])), metadata=metadata)
    return RecordingData(schema, None, train, sampler, train_loader, eval_loader, len(train), 0, description, world_size)


def pixels_of(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames `(B, T, H, W, 3)` -> float pixels `(B, T, 3, H, W)` in [0, 1]."""
    return frames.permute(0, 1, 4, 2, 3).float() / 255.0


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, `(..., 3, H, W)` in [0, 1] -> `(...)` (clamped to [0, 1])."""
    mse = (reconstruction.float().clamp(0, 1) - target.float()).square().mean(dim=(-3, -2, -1))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def downsampled_baseline(pixels: torch.Tensor, numbers: int) -> torch.Tensor:
    """The frames kept as `numbers` values each (what the latent holds): area-downsampled to the largest square
    `s x s x 3 <= numbers`, upsampled back bilinearly. `(B, T, 3, H, W)` -> the same shape."""
    import torch.nn.functional as F

    b, t, c, height, width = pixels.shape
    side = max(1, int(math.sqrt(numbers / 3)))
    small = F.interpolate(pixels.reshape(b * t, c, height, width), size=(side, side), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).reshape(pixels.shape)


class TokenizerStage(Stage):
    name = "tokenizer"
    description = "DreamerV4 phase 0: causal tokenizer (masked autoencoding)"
    loss_terms = ("reconstruction_mse", "perceptual")
    arguments_classes = (TokenizerArguments,)

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.tokenizer_args = args.of(TokenizerArguments)

    def load_data(self, args: Any, world_size: int) -> RunData:
        return load_recording_clips(args, world_size, self.tokenizer_args.validation_episode_fraction)

    def build_model(self, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        from modeling_dreamer import DreamerTokenizer, DreamerTokenizerConfig

        height, width = schema.frame_size
        init_from = self.args.model.init_from
        kwargs = model_kwargs(self.args)
        if init_from is None:
            try:
                config = DreamerTokenizerConfig.from_preset(self.args.model.preset, image_height=height,
                                                            image_width=width, **self.args.model.overrides())
            except (ValueError, TypeError) as error:
                raise ArgumentError(f"preset {self.args.model.preset!r} with model_overrides "
                                    f"{self.args.model.model_overrides}: {error}") from None
            model = DreamerTokenizer._from_config(config, **kwargs)
            origin = {"init": "scratch", "preset": self.args.model.preset}
        else:
            try:
                model = DreamerTokenizer.from_pretrained(init_from, **kwargs)
            except (OSError, ValueError) as error:
                raise RunError(f"--init_from {init_from}: {error}") from None
            origin = {"init": "pretrained tokenizer", "init_from": init_from}
        c = model.config
        if (c.image_height, c.image_width) != (height, width):
            raise RunError(f"the tokenizer takes {c.image_height} x {c.image_width} frames, the recording has "
                           f"{height} x {width}")
        return model, origin

    def loss_weights(self) -> dict[str, float]:
        from training.tokenizer_objectives import TOKENIZER_LOSS_WEIGHTS

        return dict(TOKENIZER_LOSS_WEIGHTS)

    def compute_losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator,
                       unwrapped: nn.Module) -> StepLosses:
        from training.tokenizer_objectives import masked_autoencoding_mse, multiscale_gradient_loss

        pixels = pixels_of(batch["frames"])
        mask = unwrapped.draw_patch_mask(pixels.shape[0], pixels.shape[1], generator)
        out = model(pixels, patch_mask=mask)
        count = torch.full((), float(pixels.shape[0] * pixels.shape[1]), device=pixels.device)
        losses = {"reconstruction_mse": masked_autoencoding_mse(out.reconstruction, pixels),
                  "perceptual": multiscale_gradient_loss(out.reconstruction, pixels)}
        return StepLosses(losses, {name: count for name in losses}, {"masked_share": mask.float().mean()})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, seed: int) -> Evaluation:
        """PSNR and MSE of the held-out clips' reconstructions (no mask), and of the downsampled baseline."""
        config = accelerator.unwrap_model(model).config
        numbers = int(np.prod(config.latent_shape))
        records = []
        for batch in loader:
            pixels = pixels_of(batch["frames"])
            reconstruction = model(pixels).reconstruction.float()
            baseline = downsampled_baseline(pixels, numbers)
            records.append({"psnr": psnr(reconstruction, pixels).flatten(), "baseline_psnr": psnr(baseline, pixels).flatten(),
                            "mse": (reconstruction.clamp(0, 1) - pixels).square().mean(dim=(-3, -2, -1)).flatten()})
        arrays = gather_records(records, accelerator)
        metrics = {key: float(arrays[key].mean()) for key in ("psnr", "baseline_psnr", "mse")}
        metrics["psnr_gain_over_baseline"] = metrics["psnr"] - metrics["baseline_psnr"]
        return Evaluation(metrics, arrays)

    def model_card_lines(self, config: Any) -> list[str]:
        return [f"- frames {config.image_height} x {config.image_width}, patches {config.patch_size} x {config.patch_size}; "
                f"latents ({', '.join(map(str, config.latent_shape))}) in (-1, 1)",
                f"- masked autoencoding, mask rate per image U(0, {config.mask_prob_max})"]
