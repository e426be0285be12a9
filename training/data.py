"""The data of a training run: the prepared dataset's windows, the reward-mixture sampler and the loaders.

`Stage.load_data` returns a `RunData`; the default (`load_windows`) serves the stages that train on latent
windows of a `python -m data.prepare` dataset (dynamics, agent, imagination). The loop reads only the fields
of `RunData`, so a stage that trains on something else (the tokenizer, on frames) returns its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeling_dreamer.errors import DataError, RunError
from training.arguments import DreamerTrainingArguments, RunArguments


@dataclass
class RunData:
    """What the loop needs of the data: the dataset's schema, the training sampler and loaders, what a checkpoint
    records about the data (`description`), and the model card's summary of it."""

    schema: Any
    datasets: Any
    train_windows: Any  # the training examples (data.windows.WindowDataset for latent windows)
    sampler: Any  # resumable: `resume_at(epoch, draws)`, `__len__`; the loader's sampler
    train_loader: Any
    eval_loader: Any
    num_windows: int
    num_relevant: int
    description: dict[str, Any]
    world_size: int

    def steps_per_epoch(self, t: DreamerTrainingArguments) -> int:
        batches = math.ceil(len(self.sampler) / t.per_device_train_batch_size / self.world_size)
        return max(1, batches // t.gradient_accumulation_steps)

    def summary(self) -> dict[str, Any]:
        """The dataset as the model card describes it (no local paths): `{"name", "lines"}`."""
        spec = self.schema.reward_spec

        def videos(split: str) -> int:
            return len(set(self.datasets[split]["video_id"])) if split in self.datasets else 0

        validation = len(self.datasets["validation"]) if "validation" in self.datasets else 0
        reward = spec.describe() if hasattr(spec, "describe") else \
            f"{spec.gold_scale} x gold gained + {spec.death_penalty} x death"
        return {"name": self.description["name"], "lines": [
            f"prepared dataset `{self.description['name']}`: {len(self.datasets['train']):,} training frames in "
            f"{videos('train')} videos, {validation:,} held-out frames in {videos('validation')} videos",
            f"reward: {reward}",
        ]}


def load_windows(args: RunArguments, world_size: int) -> RunData:
    """Windows of `window_length` consecutive frames of a prepared dataset, drawn by the mixture sampler
    (uniform windows and, with probability `relevant_fraction`, windows with a nonzero reward)."""
    from torch.utils.data import DataLoader, Subset

    from data.sampler import MixtureSampler
    from data.schema import load_prepared
    from data.windows import WindowDataset, collate_windows

    d, t = args.data, args.training
    try:
        datasets, schema = load_prepared(d.dataset_path)
    except (FileNotFoundError, DataError) as error:
        raise RunError(f"dataset_path {d.dataset_path}: {error}") from None
    windows = WindowDataset(datasets["train"], d.window_length, stride=d.window_stride)
    if len(windows) == 0:
        raise RunError(f"{d.dataset_path}: no training window of {d.window_length} consecutive frames")
    relevant = windows.relevant_windows()
    sampler = MixtureSampler(len(windows), relevant, d.relevant_fraction, seed=t.seed)
    train_loader = DataLoader(windows, batch_size=t.per_device_train_batch_size, sampler=sampler,
                              collate_fn=collate_windows, drop_last=True, num_workers=d.dataloader_num_workers)
    eval_loader = None
    if "validation" in datasets and len(datasets["validation"]) > 0:
        eval_windows = WindowDataset(datasets["validation"], d.window_length)
        if d.max_eval_windows is not None and len(eval_windows) > d.max_eval_windows:
            eval_windows = Subset(eval_windows, range(d.max_eval_windows))
        if len(eval_windows) > 0:
            eval_loader = DataLoader(eval_windows, batch_size=t.per_device_eval_batch_size, shuffle=False,
                                     collate_fn=collate_windows)
    description = {"name": Path(d.dataset_path).name, "fingerprint": windows.fingerprint(), "windows": len(windows),
                   "relevant_windows": len(relevant), "window_length": d.window_length}
    return RunData(schema, datasets, windows, sampler, train_loader, eval_loader, len(windows), len(relevant),
                   description, world_size)
