"""Training checkpoints: `OUTPUT/checkpoint-<step>/`, written atomically.

A checkpoint holds Accelerate's state (model, optimiser, scheduler, RNG), the loss normalisers as
`rms_state.safetensors`, and `trainer_state.json` (step, epoch, batches consumed in the epoch, counters).
It is written into `checkpoint-<step>.tmp` and renamed when complete, so a crash never leaves a
half-written checkpoint that `--resume_from_checkpoint latest` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RMS_STATE_FILE = "rms_state.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where the run is: enough, with Accelerate's state, to continue exactly."""

    global_step: int = 0  # optimiser steps taken (skipped non-finite steps included)
    epoch: int = 0  # current sampler epoch
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    skipped_steps: int = 0  # optimiser steps skipped because a loss was not finite
    seed: int = 0
    stage: str = ""
    sampler: dict = field(default_factory=dict)  # MixtureSampler.state_dict() at the checkpoint

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "TrainerState":
        path = folder / TRAINER_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {folder} is not a complete training checkpoint")
        return cls(**json.loads(path.read_text()))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: Path, requested: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint (None if there is none); a path -> that folder."""
    if not requested:
        return None
    if requested == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(requested)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a checkpoint folder (no {TRAINER_STATE_FILE})")
    return path


def temporary_checkpoint_dir(output_dir: Path, step: int) -> tuple[Path, Path]:
    """(folder to write into, final folder name)."""
    final = output_dir / f"checkpoint-{step}"
    return output_dir / f"checkpoint-{step}.tmp", final


def finalize_checkpoint(tmp: Path, final: Path) -> None:
    """Atomically publish a fully written checkpoint (rename is atomic on one filesystem)."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def prune_checkpoints(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond `keep`; returns the deleted folders."""
    if keep is None or keep <= 0:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = checkpoints[: max(0, len(checkpoints) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
