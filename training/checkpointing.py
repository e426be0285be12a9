"""The run folder and its checkpoints.

`OUTPUT/checkpoint-<step>/` holds Accelerate's state (model, optimiser, scheduler, RNG), the loss
normalisers as `rms_state.safetensors` and `trainer_state.json` (where the run is and what it was run
with). Accelerate writes its part; the two files of ours are written by a save-state hook.

Written here because Accelerate lacks it: Accelerate's automatic checkpoint naming
(`checkpoints/checkpoint_<i>`, numbered by save count) cannot give the `checkpoint-<step>` names and it
writes in place; so a checkpoint is written into `checkpoint-<step>.tmp` and renamed when complete (a
crash never leaves a half-written checkpoint where `latest` would find it), and pruning
(`save_total_limit`) is ours since Accelerate's `total_limit` works only with its own naming.

The run folder is locked for the whole run (a second run into the same folder stops at once), a new
run refuses a folder that already holds something unless it resumes or is told to overwrite, and a
resume checks, before any weight is read, that the checkpoint is of this stage and was made with the
arguments and data this run has.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modeling_dreamer.errors import RunError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RMS_STATE_FILE = "rms_state.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
LOCK_FILE = ".run.lock"
# What a run writes into its output folder; `overwrite_output_dir` deletes exactly these.
RUN_ARTIFACTS = re.compile(
    r"^(checkpoint-\d+(\.tmp)?|final|metrics\.jsonl|eval_metrics\.json|eval_predictions\.npz|rank_state_\d+\.json|dreamer)$"
)

# Arguments a resumed run may change. Everything else must equal what the checkpoint was made with,
# because the restored optimiser, scheduler, normalisers or data position would not honour a new value.
# The global batch (per-device batch, accumulation, number of processes) may change: the run continues
# at the same draw of the sampler, so no data is replayed or skipped.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "dataset_path", "max_steps", "num_train_epochs",
    "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size", "max_eval_windows",
    "dataloader_num_workers", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "report_to",
    "push_to_hub", "hub_model_id", "mixed_precision", "torch_compile", "attn_implementation",
    "gradient_checkpointing",
})


@dataclass
class TrainerState:
    """Where the run is, and what exact continuation depends on."""

    global_step: int = 0  # optimiser steps taken (skipped non-finite steps included)
    epoch: int = 0  # current sampler epoch
    draws_in_epoch: int = 0  # sampler draws consumed in this epoch, over all processes
    skipped_steps: int = 0  # optimiser steps skipped because a loss or a gradient was not finite
    stage: str = ""
    world_size: int = 1
    global_batch_size: int = 0
    dataset: dict = field(default_factory=dict)  # fingerprint, windows, relevant windows, window length
    arguments: dict = field(default_factory=dict)  # every argument of the run, by name

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "TrainerState":
        path = folder / TRAINER_STATE_FILE
        if not path.is_file():
            raise RunError(f"{path}: missing; {folder} is not a complete training checkpoint")
        try:
            fields = json.loads(path.read_text())
            return cls(**fields)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
            raise RunError(f"{path}: corrupt training state ({error})") from None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: Path, requested: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint of `output_dir` (an error if there is none, as in
    `transformers.Trainer`); a path -> that folder, which must be a checkpoint; None -> None."""
    if not requested:
        return None
    if requested == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise RunError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}")
        return checkpoints[-1]
    path = Path(requested)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise RunError(f"--resume_from_checkpoint {path}: not a checkpoint folder (no {TRAINER_STATE_FILE})")
    return path


class RunLock:
    """An exclusive lock on `output_dir` for the lifetime of the run (main process only).

    `fcntl.flock` is released by the kernel when the process ends, however it ends, so a killed run never
    leaves a stale lock.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.handle: Any = None

    def acquire(self) -> None:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(f"{self.path.parent}: another run ({holder}) is using this output_dir; wait for it to "
                           "finish or choose another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def prepare_output_dir(output_dir: Path, checkpoint: Path | None, overwrite: bool) -> None:
    """Check (and with `overwrite`, clear) the output folder of a run that holds its lock.

    A new run needs an empty folder, or `overwrite` (which deletes the previous run's checkpoints, final
    model and metrics, and nothing else). A resumed run may write into the folder that holds its
    checkpoint; resuming from a checkpoint elsewhere into a folder that holds another run is refused too.
    Stale `checkpoint-<step>.tmp` folders of a killed run are removed.
    """
    existing = [p for p in output_dir.iterdir() if p.name != LOCK_FILE]
    continues_here = checkpoint is not None and checkpoint.resolve().parent == output_dir.resolve()
    if existing and not continues_here:
        if not overwrite:
            listed = ", ".join(sorted(p.name for p in existing)[:5])
            raise RunError(f"{output_dir}: output_dir is not empty ({listed}{', ...' if len(existing) > 5 else ''}); "
                           "pass --resume_from_checkpoint latest to continue the run there, "
                           "--overwrite_output_dir to replace it, or choose another output_dir")
        for path in existing:
            if RUN_ARTIFACTS.match(path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in output_dir.glob("checkpoint-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def check_resume(saved: TrainerState, checkpoint: Path, stage: str, arguments: dict[str, Any]) -> None:
    """Refuse a resume whose checkpoint is of another stage, or whose arguments differ from the checkpoint's
    in anything but `RESUMABLE_CHANGES`; the message names every difference."""
    if saved.stage != stage:
        raise RunError(f"{checkpoint}: a checkpoint of stage {saved.stage!r}; this run is stage {stage!r}")
    # An argument this version no longer has cannot be honoured: resuming would silently change the run.
    from training.arguments import REMOVED_ARGUMENTS

    gone = {name: value for name, value in saved.arguments.items()
            if name in REMOVED_ARGUMENTS and value != REMOVED_ARGUMENTS[name][0]}
    if gone:
        raise RunError(f"{checkpoint}: made with arguments this version no longer has ({gone}); it cannot continue "
                       "exactly. Start a new run (--init_from its model)")
    differences = [
        f"{name}: {saved.arguments.get(name)!r} in the checkpoint, {value!r} now"
        for name, value in sorted(arguments.items())
        if name not in RESUMABLE_CHANGES and name in saved.arguments and saved.arguments[name] != _jsonable(value)
    ]
    if differences:
        raise RunError(f"{checkpoint}: cannot resume exactly with changed arguments ({'; '.join(differences)}). "
                       "Resume with the checkpoint's values, or start a new run (--init_from its model)")


def check_resume_data(saved: TrainerState, checkpoint: Path, dataset: dict[str, Any]) -> None:
    """Refuse a resume on other data (or other windows of it): draw positions would mean other windows."""
    changed = {k: (saved.dataset.get(k), v) for k, v in dataset.items() if saved.dataset.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
        raise RunError(f"{checkpoint}: made on other data or windows ({details}); the run cannot continue exactly")


def _jsonable(value: Any) -> Any:
    """A value as it reads back from trainer_state.json (tuples become lists)."""
    return json.loads(json.dumps(value))


def find_unreadable_file(checkpoint: Path) -> str | None:
    """Name the first file of a checkpoint that cannot be read, and why (for the error of a failed resume)."""
    import torch
    from safetensors import safe_open

    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_tensor(key)
            elif path.suffix in (".bin", ".pkl", ".pt"):
                torch.load(path, map_location="cpu", weights_only=False)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as error:  # noqa: BLE001 - any failure to read is what we report
            return f"{path}: {type(error).__name__}: {error}"
    return None


def finalize_checkpoint(tmp: Path, final: Path) -> None:
    """Publish a fully written checkpoint (a rename is atomic on one filesystem)."""
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
