"""What the multi-process and resume tests observe of a run, installed by monkeypatching the loop (the loop
itself has no testing flags).

- `record_rank_state(output_dir)`: a context manager; while it is active, every run records the (window,
  source) draws each process trains on, and writes `rank_state_<rank>.json` at the end (a checksum of that
  process's weights, its normaliser state, the draws in order).
- `python tests/rank_probe.py <train.py arguments>`: `train.py` with the recording installed (what the DDP
  tests launch with `accelerate launch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rank_state(run: Any, windows: list[list[int]]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name, tensor in sorted(run.unwrapped.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"rank": run.accelerator.process_index, "weights_sha256": digest.hexdigest(),
            "rms_state": {k: v.item() for k, v in run.normalizer.state_dict().items()}, "windows": windows}


@contextlib.contextmanager
def record_rank_state() -> Iterator[None]:
    from training import loop

    original_losses, original_finish = loop.stage_losses, loop.finish
    windows: list[list[int]] = []

    def stage_losses(run: Any, batch: dict[str, Any], generator: Any) -> Any:
        windows.extend([int(i), int(s)] for i, s in zip(batch["window_index"], batch["source"]))
        return original_losses(run, batch, generator)

    def finish(run: Any) -> Any:
        metrics = original_finish(run)
        path = run.output_dir / f"rank_state_{run.accelerator.process_index}.json"
        path.write_text(json.dumps(rank_state(run, windows)))
        windows.clear()
        return metrics

    loop.stage_losses, loop.finish = stage_losses, finish
    try:
        yield
    finally:
        loop.stage_losses, loop.finish = original_losses, original_finish


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import train

    with record_rank_state():
        train.main(sys.argv[1:])
