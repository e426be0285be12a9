"""Windows of T consecutive frames over a prepared split, read zero-copy from its Arrow files.

A window never crosses a video boundary or a gap in frame numbers (docs/data.md), so the
frame numbers inside a window are `f, f+1, ..., f+T-1` and every reward and action in it belongs
to the frame number beside it (array positions never leave this module: a reward read by position drifts off its
frame wherever latents are missing).

Memory: the latents stay in the memory-mapped Arrow files (only the page cache grows); the small
per-frame columns (frame number, video, reward, death, actions: about 25 bytes per frame) are held
in RAM so a read is a handful of numpy slices.
"""

from __future__ import annotations

import numpy as np

from data.sampler import DrawSource
from data.schema import DatasetSchema


class WindowDataset:
    """T-frame windows inside runs of consecutive frame numbers of one video.

    Args:
        split: one split of a prepared `DatasetDict` (memory-mapped, no indices mapping).
        window_length: T, frames per window.
        stride: frames between the starts of two windows of one run. Default `window_length`:
            non-overlapping tiles, so one pass over the windows is one pass over the data (the
            last `< T` frames of each run are not covered).
        schema: the dataset's schema; read from the split's metadata when None.

    `ds[i]` and `ds[(i, source)]` return a dict of numpy arrays:
    `latents (T, C, H, W) float16`, `reward (T,) float32`, `death (T,) bool`, one `(T,)` array per
    action component (int64 categorical, bool binary), `has_action (T,) bool`, `terminated (T,) bool` (an
    episode's terminal frame; all False without the column), with a state vector `state (T, S) float32` and
    `state_mask (T, S) bool`, `frame_index (T,) int32`, `video_id str`,
    `source int` (0 uniform, 1 relevant), `window_index int`.
    """

    def __init__(
        self,
        split: "datasets.Dataset",  # noqa: F821
        window_length: int,
        stride: int | None = None,
        schema: DatasetSchema | None = None,
    ) -> None:
        if window_length < 1:
            raise ValueError(f"window_length must be >= 1, got {window_length}")
        if split._indices is not None:
            raise ValueError("split has an indices mapping (select/shuffle/filter); call flatten_indices() first")
        self.split = split
        self.window_length = window_length
        self.stride = stride or window_length
        self.schema = schema or DatasetSchema.from_json(split.info.description)
        self._index_rows()
        self._map_latents()

    def _index_rows(self) -> None:
        table = self.split.data
        self.frame_index = table.column("frame_index").to_numpy().astype(np.int32)
        videos = table.column("video_id").combine_chunks().dictionary_encode()
        self.video_names = videos.dictionary.to_pylist()
        self.video_code = videos.indices.to_numpy()
        self.reward = table.column("reward").to_numpy().astype(np.float32)
        self.death = table.column("death").to_numpy(zero_copy_only=False)
        self.actions = {name: table.column(name).to_numpy(zero_copy_only=False) for name in self.schema.action_space}
        self.has_action = table.column("has_action").to_numpy(zero_copy_only=False)
        # Episodes that end (recorded environments): the terminal frame of each episode. Datasets without the
        # column (recordings of matches, the user's videos) never end an episode inside a window.
        self.terminated = (table.column("terminated").to_numpy(zero_copy_only=False) if "terminated" in table.column_names
                           else np.zeros(len(self.frame_index), bool))
        # The per-frame state vector (read from the game), with which of its values were read.
        size = len(self.schema.state_names)
        self.state = self.state_mask = None
        if size:
            self.state = table.column("state").combine_chunks().flatten().to_numpy().reshape(-1, size).astype(np.float32)
            self.state_mask = table.column("state_mask").combine_chunks().flatten().to_numpy(
                zero_copy_only=False).reshape(-1, size)

        rows = len(self.frame_index)
        run_breaks = np.ones(rows, bool)
        run_breaks[1:] = (self.video_code[1:] != self.video_code[:-1]) | (np.diff(self.frame_index) != 1)
        run_starts = np.flatnonzero(run_breaks)
        run_ends = np.append(run_starts[1:], rows)
        T = self.window_length
        starts = [np.arange(a, b - T + 1, self.stride) for a, b in zip(run_starts, run_ends) if b - a >= T]
        self.window_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)

        def windows_with(frames: np.ndarray) -> np.ndarray:
            counts = np.concatenate([[0], np.cumsum(frames)])
            return counts[self.window_starts + T] > counts[self.window_starts]

        # Reward-relevant: a nonzero reward, or an episode's end (what a continuation head must learn).
        self._has_reward = windows_with((self.reward != 0) | self.terminated)

    def _map_latents(self) -> None:
        """Per Arrow chunk, a zero-copy `(rows, C, H, W)` float16 view into the memory map."""
        column = self.split.data.table.column("latents")
        shape = self.schema.latent_shape
        self._chunks = [chunk.flatten().to_numpy(zero_copy_only=True).reshape(-1, *shape) for chunk in column.chunks]
        self._chunk_starts = np.cumsum([0] + [len(chunk) for chunk in self._chunks])

    def __getstate__(self) -> dict:
        # The chunk views point into a memory map: rebuild them instead of pickling their bytes.
        state = self.__dict__.copy()
        del state["_chunks"], state["_chunk_starts"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._map_latents()

    def __len__(self) -> int:
        return len(self.window_starts)

    def fingerprint(self) -> str:
        """A hash of what the windows hold besides the latents: frame numbers, videos, rewards, deaths,
        actions and labels, the latent shape and the window layout. Two datasets with the same fingerprint
        give the same windows in the same order (resumed runs check it)."""
        import hashlib

        digest = hashlib.sha256(repr((self.schema.latent_shape, self.window_length, self.stride)).encode())
        for values in (self.frame_index, self.video_code, self.reward, self.death, self.has_action,
                       *self.actions.values(), self.window_starts, *([self.terminated] if self.terminated.any() else [])):
            digest.update(np.ascontiguousarray(values).tobytes())
        digest.update("\n".join(self.video_names).encode())
        return digest.hexdigest()[:16]

    def relevant_windows(self) -> np.ndarray:
        """Indices of the windows that contain a nonzero reward or an episode's end, `(K,)` int64 ascending."""
        return np.flatnonzero(self._has_reward)

    def _latents(self, start: int, length: int) -> np.ndarray:
        chunk = int(np.searchsorted(self._chunk_starts, start, side="right")) - 1
        offset = start - self._chunk_starts[chunk]
        if offset + length <= len(self._chunks[chunk]):
            return self._chunks[chunk][offset : offset + length].copy()
        pieces = []
        while length > 0:
            piece = self._chunks[chunk][offset : offset + length]
            pieces.append(piece)
            length -= len(piece)
            chunk, offset = chunk + 1, 0
        return np.concatenate(pieces)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, source = key if isinstance(key, tuple) else (key, DrawSource.UNIFORM)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start, T = int(self.window_starts[index]), self.window_length
        rows = slice(start, start + T)
        return {
            "latents": self._latents(start, T),
            "reward": self.reward[rows].copy(),
            "death": self.death[rows].copy(),
            **{name: values[rows].copy() for name, values in self.actions.items()},
            "has_action": self.has_action[rows].copy(),
            "terminated": self.terminated[rows].copy(),
            **({"state": self.state[rows].copy(), "state_mask": self.state_mask[rows].copy()}
               if self.state is not None else {}),
            "frame_index": self.frame_index[rows].copy(),
            "video_id": self.video_names[self.video_code[start]],
            "source": int(source),
            "window_index": index,
        }


def collate_windows(items: list[dict]) -> dict:
    """DataLoader `collate_fn`: stack windows into torch tensors with their dtypes kept.

    Arrays become `(B, T, ...)` tensors (latents stay float16 until the model casts them);
    `source` and `window_index` become `(B,)` int64; `video_id` stays a list of str. `sources` keeps the draw
    sources as a tuple of ints on the host as well (Accelerate moves tensors to the device, not tuples), so a
    stage can route examples without reading the device.
    """
    import torch

    batch: dict = {"sources": tuple(int(item["source"]) for item in items)}
    for key, value in items[0].items():
        if key == "video_id":
            batch[key] = [item[key] for item in items]
        elif isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(np.stack([item[key] for item in items]))
        else:
            batch[key] = torch.tensor([item[key] for item in items], dtype=torch.int64)
    return batch
