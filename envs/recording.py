"""The files of a recording (`python -m envs.record`): an HF dataset, one row per frame, in the Hub's layout.

    DIR/data/train-00000-of-00001.parquet    the rows (parquet; the `datasets` features travel in its schema)
    DIR/recording.json                       metadata: env, action mapping, seeds, frame size, policy, ...
    DIR/README.md                            a dataset card, so `huggingface-cli upload REPO DIR --repo-type dataset`
                                             publishes the folder as it is

Columns (one row per frame, sorted by episode then frame):

| column | type | meaning |
|---|---|---|
| `episode` | int32 | episode number 0..N-1 within the recording |
| `frame_index` | int32 | frame number within the episode (0 is the frame `reset` showed) |
| `frame` | `datasets.Image` (PNG) | the frame, `frame_size` x `frame_size` RGB |
| one per action component | int64 (categorical) / bool (binary) | `actions[t]`: taken after observing frame t |
| `has_action` | bool | False on an episode's last frame (nothing was done after it; its action columns are 0 / False) |
| `reward` | float64 | `reward[t]`: returned by the step that produced frame t (0 at frame 0) |
| `terminated` | bool | True only on the last frame of an episode that reached a terminal state |
| `truncated` | bool | True only on the last frame of an episode cut short (time limit, `--max-steps`) |

`datasets.load_dataset(DIR, split="train")` and :func:`load_recording` read it back (frames decode to PIL images).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from envs.action_mapping import ActionMapping

METADATA_FILE = "recording.json"
DATA_FILE = "data/train-00000-of-00001.parquet"
FORMAT = "dreamer-env-recording"
FORMAT_VERSION = 1
RESERVED_COLUMNS = ("episode", "frame_index", "frame", "has_action", "reward", "terminated", "truncated")


def recording_features(mapping: ActionMapping) -> "datasets.Features":  # noqa: F821
    """The `datasets.Features` of a recording of an env whose actions `mapping` maps."""
    from datasets import Features, Image as ImageFeature, Value

    clash = [name for name in mapping.action_space if name in RESERVED_COLUMNS]
    if clash:
        raise ValueError(f"action components {clash} would overwrite the recording's own columns {list(RESERVED_COLUMNS)}")
    actions = {name: Value("int64" if spec["type"] == "categorical" else "bool") for name, spec in mapping.action_space.items()}
    return Features({
        "episode": Value("int32"),
        "frame_index": Value("int32"),
        "frame": ImageFeature(),
        **actions,
        "has_action": Value("bool"),
        "reward": Value("float64"),
        "terminated": Value("bool"),
        "truncated": Value("bool"),
    })


def encode_png(frame: np.ndarray) -> bytes:
    """PNG bytes of an `(H, W, 3)` uint8 frame (lossless; what `datasets.Image` stores)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


class RecordingWriter:
    """Writes a recording episode by episode into a hidden folder beside `output`, moved into place by
    :meth:`close`, so an interrupted run leaves no half recording that looks whole."""

    def __init__(self, output: str | os.PathLike, mapping: ActionMapping, overwrite: bool = False):
        import pyarrow.parquet as pq

        self.output = Path(output)
        if self.output.exists() and not (self.output.is_dir() and not any(self.output.iterdir())):
            if not overwrite:
                raise ValueError(f"--output {self.output} exists and is not empty: choose a new folder (or --overwrite)")
        self.mapping = mapping
        self.features = recording_features(mapping)
        self.partial = self.output.parent / f".{self.output.name}.partial"
        if self.partial.exists():
            shutil.rmtree(self.partial)
        (self.partial / DATA_FILE).parent.mkdir(parents=True)
        self.schema = self.features.arrow_schema  # carries the features (Image!) as schema metadata
        self.writer = pq.ParquetWriter(self.partial / DATA_FILE, self.schema)
        self.rows = 0

    def add_episode(self, episode: int, frames: Sequence[np.ndarray], actions: Sequence[dict[str, int | bool]],
                    rewards: Sequence[float], terminated: bool, truncated: bool) -> None:
        """One episode of F frames: `frames` F `(S, S, 3)` uint8, `actions` F - 1 component dicts (taken after
        frames 0..F-2), `rewards` F floats (`rewards[0]` is 0); the flags belong to the last frame."""
        import pyarrow as pa

        count = len(frames)
        if len(actions) != count - 1 or len(rewards) != count:
            raise ValueError(f"episode {episode}: {count} frames need {count - 1} actions and {count} rewards, "
                             f"got {len(actions)} and {len(rewards)}")
        last = np.arange(count) == count - 1
        columns: dict[str, Any] = {
            "episode": np.full(count, episode, np.int32),
            "frame_index": np.arange(count, dtype=np.int32),
            "frame": [{"bytes": encode_png(frame), "path": None} for frame in frames],
        }
        for name, spec in self.mapping.action_space.items():
            dtype = np.int64 if spec["type"] == "categorical" else bool
            columns[name] = np.array([a[name] for a in actions] + [0], dtype)
        columns.update(has_action=~last, reward=np.asarray(rewards, np.float64),
                       terminated=last & bool(terminated), truncated=last & bool(truncated))
        self.writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.rows += count

    def close(self, metadata: dict[str, Any]) -> Path:
        """Write `recording.json` and the dataset card, and move the folder into place; returns it."""
        self.writer.close()
        (self.partial / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        (self.partial / "README.md").write_text(dataset_card(metadata))
        if self.output.is_dir():
            shutil.rmtree(self.output)
        elif self.output.exists():
            self.output.unlink()
        os.replace(self.partial, self.output)
        return self.output

    def abort(self) -> None:
        """Drop what was written (after an error)."""
        self.writer.close()
        shutil.rmtree(self.partial, ignore_errors=True)


def dataset_card(metadata: dict[str, Any]) -> str:
    """README.md of a recording: the Hub's YAML header (data files, tags) and what the columns mean."""
    components = ", ".join(f"`{name}` ({spec['type']}{' ' + str(spec['n']) if 'n' in spec else ''})"
                           for name, spec in metadata["action_mapping"]["action_space"].items())
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
tags:
- gymnasium
- world-model
- dreamerv4
---

# {metadata["env_id"]}, played by `{metadata["policy"]}`

{metadata["episodes"]} episodes, {metadata["frames"]} frames of {metadata["frame_size"][0]}x{metadata["frame_size"][1]} RGB
(from the env's {"image observation" if metadata["frame_source"] == "observation" else "rgb_array rendering"},
resized by {metadata["resampling"]}), recorded by `python -m envs.record` of modeling_dreamer.

One row per frame: `episode`, `frame_index`, `frame`, the action components {components}, `has_action`,
`reward`, `terminated`, `truncated`. `actions[t]` is the action taken after observing frame t; `reward[t]` is
the reward returned by the step that produced frame t (0 at frame 0); an episode's last frame has no action
(`has_action` false) and carries `terminated` / `truncated`. Episode e was reset with seed
{metadata["seed"]} + e. `recording.json` holds the env id, the action-space mapping, seeds, frame size and policy.
"""


def load_recording(path: str | os.PathLike) -> tuple["datasets.Dataset", dict[str, Any]]:  # noqa: F821
    """(the rows as a `datasets.Dataset`, the metadata of `recording.json`) of a recording folder."""
    import datasets
    import pyarrow.parquet as pq

    path = Path(path)
    metadata_file = path / METADATA_FILE
    if not metadata_file.is_file():
        raise FileNotFoundError(f"{path} is not a recording: {METADATA_FILE} is missing")
    metadata = json.loads(metadata_file.read_text())
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{metadata_file}: format {metadata.get('format')!r} is not {FORMAT!r}")
    files = sorted((path / "data").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path / 'data'} holds no parquet files")
    table = pq.ParquetDataset([str(f) for f in files]).read()
    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features)), metadata


def read_frames(path: str | os.PathLike, columns: Sequence[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """A recording's frames decoded at once, for training and preparation: ``(frames (N, H, W, 3) uint8, {column:
    (N,) array} for `episode`, `frame_index` and each of `columns`, metadata)``, rows in the recording's order
    (episode, then frame). The PNG bytes are read straight from the parquet files: no per-row Python objects."""
    import pyarrow.parquet as pq

    path = Path(path)
    metadata_file = path / METADATA_FILE
    if not metadata_file.is_file():
        raise FileNotFoundError(f"{path} is not a recording of `python -m envs.record`: {METADATA_FILE} is missing")
    metadata = json.loads(metadata_file.read_text())
    files = sorted((path / "data").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path / 'data'} holds no parquet files")
    table = pq.ParquetDataset([str(f) for f in files]).read(columns=["episode", "frame_index", "frame", *columns])
    images = table.column("frame").combine_chunks().field("bytes").to_pylist()
    frames = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]) if images \
        else np.zeros((0, 0, 0, 3), np.uint8)
    values = {name: table.column(name).to_numpy() for name in ("episode", "frame_index", *columns)}
    return frames, values, metadata
