"""`python -m data.prepare`: the user's files -> a `DatasetDict` on disk + `prepare_report.json`.

    python -m data.prepare --latents-dir L --features-dir F --output OUT
    python -m data.prepare --latents-dir L --tables-dir T [--events-dir E] --mapping MAP.yaml --output OUT
    python -m data.prepare --episodes DIR --tokenizer TOKENIZER_DIR --output OUT

The first reads `<id>/features.json` (`data.importers`), the second per-frame tables and event streams as a
mapping file says (`data.mapping`, `data.tables`; the report adds the timing diagnostic, `data.timing`), the
third a recording of `python -m envs.record`, encoded by a tokenizer (`data.episodes`).

One row per frame that has a latent, sorted by (video_id, frame_index); splits `train` and
`validation` by whole videos (seeded). Each video is turned into an Arrow table and written
straight into its split's final shard file (`SplitWriter`), and nothing is read back, so memory
holds one video at a time whatever the dataset's size (`benchmarks/bench_prepare.py`).

Nothing is lost or silently wrong: every value read is validated (`data.importers`), every error
names the file (and the frame and key) and ends the command with `data.prepare: error: ...` and
status 1, warnings (missing keys, partial `is_dead`, unpaired videos, dropped reward events,
truncated latent packs) go to stderr and the report,
and the output is built beside `--output` and moved into place only when complete
(`data.staging`), so a failed or killed run leaves the previous dataset (or nothing) in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.importers import (
    DEFAULT_MAX_CARRY_FRAMES,
    DEFAULT_MAX_FRAME_GAP,
    DEFAULT_MAX_UNCOVERED_FRACTION,
    DROP_KINDS,
    DataError,
    VideoFrames,
    find_videos,
    import_video,
    read_latent_shape,
)
from data.mapping import Mapping
from data.schema import (
    REPORT_FILE,
    SCHEMA_FILE,
    DatasetSchema,
    MappedRewardSpec,
    RewardSpec,
    check_tokenizer,
    default_action_keys,
    default_action_space,
    recommended_twohot_range,
    validate_action_space,
)
from data.staging import StagedDirectory, recover
from data.timing import DEFAULT_OFFSETS as DEFAULT_TIMING_OFFSETS

SPLITS = ("train", "validation")
logger = logging.getLogger("data.prepare")

# As `datasets.config.MAX_SHARD_SIZE`, the default of `save_to_disk`: a split starts a new shard
# file once the current one holds this many bytes (after a whole video: videos are never split).
MAX_SHARD_BYTES = 500 * 10**6
# Large record batches keep most windows inside one Arrow chunk (each video is one batch up to this).
WRITER_BATCH_SIZE = 65536


def dataset_features(latent_size: int, action_space: dict[str, dict], state_size: int = 0,
                     episode_ends: bool = False) -> "datasets.Features":  # noqa: F821
    """The column types of a prepared split (docs/data.md); with `state_size` S > 0 also the state vector
    (`state`: S float32, 0 where unknown; `state_mask`: S bool, False where the value was not read); with
    `episode_ends` (recorded environments) `terminated` and `truncated` (True on an episode's last frame)."""
    from datasets import Features, List, Value

    columns = {
        "video_id": Value("string"),
        "frame_index": Value("int32"),
        "latents": List(Value("float16"), length=latent_size),
        "reward": Value("float32"),
        "death": Value("bool"),
    }
    for name, spec in action_space.items():
        columns[name] = Value("int64" if spec["type"] == "categorical" else "bool")
    columns["has_action"] = Value("bool")
    if state_size:
        columns["state"] = List(Value("float32"), length=state_size)
        columns["state_mask"] = List(Value("bool"), length=state_size)
    if episode_ends:
        columns["terminated"] = Value("bool")
        columns["truncated"] = Value("bool")
    return Features(columns)


def video_table(video: VideoFrames, features: "datasets.Features") -> "pyarrow.Table":  # noqa: F821
    """One video's rows as an Arrow table; latents become a flat fixed-size float16 list."""
    import pyarrow as pa

    rows = len(video.frame_index)
    flat = pa.array(np.ascontiguousarray(video.latents).reshape(-1))
    columns = {
        "video_id": pa.array([video.video_id] * rows, pa.string()),
        "frame_index": pa.array(video.frame_index),
        "latents": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(video.latents.shape[1:]))),
        "reward": pa.array(video.reward),
        "death": pa.array(video.death),
        **{name: pa.array(values) for name, values in video.actions.items()},
        "has_action": pa.array(video.has_action),
    }
    state = getattr(video, "state", None)
    if state is not None:
        size = state.shape[1]
        columns["state"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(state, np.float32).reshape(-1)), size)
        columns["state_mask"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(video.state_mask).reshape(-1)), size)
    if "terminated" in features:
        columns["terminated"] = pa.array(video.terminated)
        columns["truncated"] = pa.array(video.truncated)
    return pa.Table.from_pydict(columns, schema=features.arrow_schema)


def split_videos(video_ids: list[str], validation_fraction: float, seed: int) -> dict[str, list[str]]:
    """Assign whole videos to splits: a seeded shuffle, then the first ones go to validation.

    With two or more videos and a positive fraction, validation gets at least one video and train
    keeps at least one.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    count = len(video_ids)
    num_validation = 0
    if count >= 2 and validation_fraction > 0:
        num_validation = int(np.clip(round(validation_fraction * count), 1, count - 1))
    shuffled = [video_ids[i] for i in np.random.default_rng(seed).permutation(count)]
    return {"train": sorted(shuffled[num_validation:]), "validation": sorted(shuffled[:num_validation])}


class RewardTally:
    """Statistics of the per-frame rewards (after carrying), gathered video by video.

    Keeps sums, extremes and the nonzero rewards only (the percentiles need them; most frames have
    no reward), not every frame's reward.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nonzero: list[np.ndarray] = []

    def add(self, rewards: np.ndarray) -> None:
        """Count one video's `(N,)` float32 rewards."""
        if len(rewards) == 0:
            return
        self.frames += len(rewards)
        self.total += float(rewards.sum(dtype=np.float64))
        self.min = min(self.min, float(rewards.min()))
        self.max = max(self.max, float(rewards.max()))
        self.nonzero.append(rewards[rewards != 0])

    def statistics(self) -> dict:
        """The report's `reward` block (docs/data.md)."""
        nonzero = np.concatenate(self.nonzero) if self.nonzero else np.zeros(0, np.float32)
        stats = {
            "total": self.total,
            "min": self.min if self.frames else 0.0,
            "max": self.max if self.frames else 0.0,
            "mean": self.total / self.frames if self.frames else 0.0,
            "nonzero_frames": int(len(nonzero)),
            "nonzero_fraction": float(len(nonzero) / max(self.frames, 1)),
            "positive_frames": int((nonzero > 0).sum()),
            "negative_frames": int((nonzero < 0).sum()),
        }
        if len(nonzero):
            stats["nonzero_percentiles"] = {f"p{p}": float(np.percentile(nonzero, p)) for p in (5, 50, 95)}
        return stats


def reward_range_to_cover(row_stats: dict, per_video: dict[str, dict], death_penalty: float) -> tuple[float, float]:
    """`(low, high)` raw rewards the twohot range must cover: every reward in the data.

    The per-frame rewards after carrying (`row_stats` min/max), every single event's reward
    (dropped ones included: a penalty dropped with a truncated pack is still a reward the game
    gives), and the death penalty on its own whenever a death was found (two events netted onto
    one frame, gold + death, must not hide it).
    """
    low, high = row_stats["min"], row_stats["max"]
    for stats in per_video.values():
        if stats["event_reward_min"] is not None:
            low, high = min(low, stats["event_reward_min"]), max(high, stats["event_reward_max"])
    if any(stats["deaths"] for stats in per_video.values()):
        low, high = min(low, death_penalty), max(high, death_penalty)
    return float(low), float(high)


class SplitWriter:
    """Writes one split of the prepared dataset in place, in the layout `Dataset.save_to_disk` writes.

    Why not `save_to_disk`: it can only copy an existing `Dataset`, so the rows were written twice
    (to a build file, then by the copy), and the copy reads the whole build file through a memory
    map whose pages all stay resident in this process, so peak memory grew with the whole dataset
    (1,062 MB for 590 MB of latents, `benchmarks/bench_prepare.py`). Here each video's table goes
    straight into its final shard with `datasets.arrow_writer.ArrowWriter` (the writer
    `save_to_disk` uses for each shard) and nothing is read back. `finish` adds the two small files
    `save_to_disk` writes beside the shards: `dataset_info.json` (by `DatasetInfo.write_to_directory`)
    and `state.json` (no public writer exists; the keys `Dataset.load_from_disk` reads), and
    `prepare` opens the result with `datasets.load_from_disk` and checks it before publishing it.
    """

    def __init__(self, folder: Path, features: "datasets.Features", max_shard_bytes: int = MAX_SHARD_BYTES):  # noqa: F821
        self.folder = folder
        self.features = features
        self.max_shard_bytes = max_shard_bytes
        self.shards: list[Path] = []
        self.rows = 0
        self._writer = None
        self._shard_bytes = 0
        folder.mkdir()

    def write(self, table: "pyarrow.Table") -> None:  # noqa: F821
        """Append one video's rows (all to the same shard)."""
        if self._writer is None or self._shard_bytes >= self.max_shard_bytes:
            self._next_shard()
        self._writer.write_table(table)
        self._shard_bytes += table.nbytes
        self.rows += table.num_rows

    def _next_shard(self) -> None:
        from datasets.arrow_writer import ArrowWriter

        self._finalize_shard()
        # Named once the number of shards is known (`finish`); until then a name no reader takes for data.
        path = self.folder / f"shard-{len(self.shards):05d}.arrow.partial"
        self.shards.append(path)
        self._writer = ArrowWriter(features=self.features, path=str(path), writer_batch_size=WRITER_BATCH_SIZE)
        self._shard_bytes = 0

    def _finalize_shard(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.finalize()
            finally:
                writer.close()

    def close(self) -> None:
        """Release the open shard (after an error; the build folder is then discarded)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def finish(self, info: "datasets.DatasetInfo", split: str) -> None:  # noqa: F821
        """Close the last shard, give the shards their final names and write the split's metadata."""
        from datasets.fingerprint import generate_random_fingerprint

        if not self.shards:
            # An empty split (one video, or no validation) still needs one shard holding the schema:
            # with zero shards `load_from_disk` fails.
            self._next_shard()
        self._finalize_shard()
        count = len(self.shards)
        names = [f"data-{index:05d}-of-{count:05d}.arrow" for index in range(count)]
        for path, name in zip(self.shards, names):
            path.rename(self.folder / name)
        self.shards = [self.folder / name for name in names]
        info.write_to_directory(str(self.folder))
        state = {
            "_data_files": [{"filename": name} for name in names],
            # save_to_disk stores the source's fingerprint (a hash of its build file's path, unique
            # per run); a random one is as unique. It names the cache files of later `map` calls.
            "_fingerprint": generate_random_fingerprint(),
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": split,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))


def reference_latent_shape(
    latents_dir: Path, video_ids: list[str], declared: tuple[int, int, int] | None
) -> tuple[int, int, int] | None:
    """The `(C, H, W)` every video must have: `declared` if given, else the shape most videos have.

    Reads only the array headers, before any video is imported, so the file named in a mismatch is
    the odd one out (not whichever video came first). Raises DataError naming it; with a tie (no
    shape more common than the others) the error lists every shape with its files and asks for
    `--latent-shape`. Returns None if no header could be read (the import then says why).
    """
    shapes = {video_id: read_latent_shape(latents_dir / f"{video_id}.npz") for video_id in video_ids}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for video_id, shape in shapes.items():
        if shape is not None:
            by_shape.setdefault(shape, []).append(video_id)

    def files(ids: list[str]) -> str:
        shown = ", ".join(str(latents_dir / f"{video_id}.npz") for video_id in ids[:3])
        return shown + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")

    if declared is not None:
        odd = sorted(video_id for shape, ids in by_shape.items() if shape != declared for video_id in ids)
        if odd:
            raise DataError(
                f"{latents_dir / f'{odd[0]}.npz'}: latent shape mismatch: frames are {shapes[odd[0]]}, expected "
                f"{declared} (--latent-shape); {len(odd)} of {len(video_ids)} videos differ: {files(odd)}"
            )
        return declared
    if not by_shape:
        return None
    ranked = sorted(by_shape.items(), key=lambda item: -len(item[1]))
    reference, holders = ranked[0]
    if len(ranked) == 1:
        return reference  # type: ignore[return-value]
    if len(holders) == len(ranked[1][1]):
        listing = "; ".join(f"{shape} in {len(ids)} video(s): {files(ids)}" for shape, ids in ranked)
        raise DataError(
            f"{latents_dir}: latent shape mismatch between videos, and no shape is more common than the others: "
            f"{listing}. Declare the expected shape with --latent-shape C H W"
        )
    odd = sorted(video_id for _, ids in ranked[1:] for video_id in ids)
    others = f" (also different: {files(odd[1:])})" if len(odd) > 1 else ""
    raise DataError(
        f"{latents_dir / f'{odd[0]}.npz'}: latent shape mismatch: frames are {shapes[odd[0]]}, while "
        f"{len(holders)} of {len(video_ids)} videos have {reference}{others}; "
        f"if {reference} is wrong, declare the expected shape with --latent-shape C H W"
    )


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that `data.prepare` could not or must not replace.

    The output is written beside `output` and moved into place at the end (`data.staging`), so what
    matters is that `output`'s folder is writable and that `output` is absent, an empty folder, or
    (with `overwrite`) a prepared dataset.
    """
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: the output path exists and is not a folder")
    if output.is_dir():
        if any(output.iterdir()):
            if not overwrite:
                raise DataError(f"{output}: output folder exists and is not empty (pass --overwrite to replace it)")
            markers = ("dataset_dict.json", SCHEMA_FILE, ".building")
            if not any((output / marker).exists() for marker in markers):
                raise DataError(f"{output}: refusing to overwrite a folder that is not a prepared dataset")
        if not os.access(output, os.W_OK | os.X_OK):
            raise DataError(f"{output}: the output folder is read-only")
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataError(f"{output}: cannot create the output: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"{output}: cannot create the output: {ancestor} is not writable")


def _key_default(key: str) -> str:
    """What a missing key is read as (docs/data.md, "Missing keys")."""
    if key == "gold_gained":
        return "0"
    if key == "health_bar_x":
        return "the previous frame's health-bar state"
    if key == "is_dead":
        return "the health-bar rule's state"
    return "0 / False (the action default)"


def _missing_key_findings(
    per_video: dict[str, dict],
    missing_keys: Counter,
    keys_seen: set[str],
    action_space: dict[str, dict],
    action_keys: dict[str, str],
    explicit_action_space: bool,
    features_dir: Path,
) -> tuple[list[str], list[str]]:
    """`(warnings, errors)` about missing keys: every missing key is a warning; an action component
    whose key no frame of any video has is an error if the action space was given explicitly.

    With the default action space it stays a warning: the default is the library's guess of the
    user's keys (a recorder without item detection has no `item_used`), and the column is then
    all False.
    """
    warnings, errors = [], []
    total = sum(stats["feature_frames"] for stats in per_video.values())
    for key, count in sorted(missing_keys.items()):
        everywhere = [video_id for video_id, stats in per_video.items() if stats["missing_keys"].get(key, 0) == stats["feature_frames"]]
        where = f"; on every frame of {len(everywhere)} video(s): {everywhere[:5]}" if everywhere else ""
        warnings.append(f"key '{key}' missing on {count} of {total} frames{where}; read as {_key_default(key)}")
    for name, key in action_keys.items():
        if missing_keys.get(key, 0) < total or total == 0:
            continue
        seen = sorted(keys_seen - {"frame_idx"})
        message = (
            f"{features_dir}: action component '{name}' reads the key '{key}', which no frame of any video has "
            f"(keys present: {seen}); every '{name}' label would be {'0' if action_space[name]['type'] == 'categorical' else 'False'}"
        )
        if explicit_action_space:
            errors.append(message + f'. Name the features key in --action-space: {{"{name}": {{..., "key": "<features key>"}}}}')
        else:
            warnings.append(message + " (default action space; give --action-space to choose the components)")
    return warnings, errors


def _death_findings(per_video: dict[str, dict]) -> tuple[dict, list[str]]:
    """The report's view of videos with `is_dead` on some frames only, and a warning if there are any."""
    partial = sorted(video_id for video_id, stats in per_video.items() if stats["death_rule"] == "is_dead+health_bar")
    fallback = {
        "videos": partial,
        "frames": int(sum(per_video[video_id]["frames_without_is_dead"] for video_id in partial)),
        "deaths": int(sum(per_video[video_id]["deaths_from_health_bar"] for video_id in partial)),
    }
    warnings = []
    if partial:
        warnings.append(
            f"{len(partial)} video(s) have 'is_dead' on some frames only ({partial[:5]}): on their "
            f"{fallback['frames']} frames without it the health-bar rule decided death, and found "
            f"{fallback['deaths']} death(s) there (report: deaths.health_bar_fallback)"
        )
    return fallback, warnings


def prepare(
    latents_dir: str | Path,
    features_dir: str | Path,
    output: str | Path,
    validation_fraction: float = 0.1,
    seed: int = 0,
    reward_spec: RewardSpec | None = None,
    action_space: dict[str, dict] | None = None,
    action_keys: dict[str, str] | None = None,
    latent_shape: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_frame_gap: int = DEFAULT_MAX_FRAME_GAP,
    max_carry_frames: int = DEFAULT_MAX_CARRY_FRAMES,
    max_uncovered_fraction: float = DEFAULT_MAX_UNCOVERED_FRACTION,
    allow_truncated_latents: bool = False,
    validation_videos: list[str] | None = None,
    tokenizer: dict[str, str] | None = None,
) -> dict:
    """Import every video, write the `DatasetDict`, the schema and the report; return the report.

    `latent_shape` declares `(C, H, W)`; without it the shape most videos have is the reference and
    a video that differs is named. A reward or death on a frame without a latent is carried to the
    next latent frame across at most `max_carry_frames` missing frames, else dropped and reported
    (`data.importers.carry_events`). A video with more than `max_uncovered_fraction` of its
    labelled frames outside its latents' span (a truncated latent pack) is an error, or with
    `allow_truncated_latents` a warning. `validation_videos` names the validation videos (instead of
    `validation_fraction`); `tokenizer` (`{"name", "hash"}`) is recorded in the schema. Raises DataError
    (naming the file, and the frame and key where there is one) on bad input. The output is built beside
    `output` and moved into place only when complete: on any failure `output` is left exactly as it was
    (`data.staging`). Warnings (missing keys, partial `is_dead`, unpaired videos, dropped events, truncated
    packs) go to the `data.prepare` logger and to the report's `warnings`.

    Memory: one video at a time (its latents, a few copies at most), plus small per-video
    statistics; the rows are written once, straight into the final shards (`SplitWriter`).
    """
    explicit_action_space = action_space is not None
    reward_spec = reward_spec or RewardSpec()
    action_space = action_space or default_action_space()
    try:
        validate_action_space(action_space)
    except ValueError as error:
        raise DataError(f"action space: {error}") from error
    action_keys = {**default_action_keys(action_space), **(action_keys or {})}
    if set(action_keys) != set(action_space):
        raise DataError(f"action space: keys given for components {sorted(set(action_keys) - set(action_space))} it does not have")
    latent_shape = _check_common_options(latent_shape, validation_fraction, max_carry_frames, max_uncovered_fraction, tokenizer)
    latents_dir, features_dir, output = Path(latents_dir), Path(features_dir), Path(output)

    warnings: list[str] = []
    warn = _warner(warnings)
    _clean_output(output, overwrite, warn)
    paired, without_features, without_latents = find_videos(latents_dir, features_dir)
    splits = pair_and_split(latents_dir, (paired, without_features, without_latents), f"<id>/features.json in "
                            f"{features_dir}", ("features", "features.json"), warn, validation_fraction, seed,
                            validation_videos)
    latent_shape = reference_latent_shape(latents_dir, paired, latent_shape)
    missing_keys: Counter = Counter()
    keys_seen: set[str] = set()

    def import_one(video_id: str) -> VideoFrames:
        video = import_video(
            video_id,
            latents_dir / f"{video_id}.npz",
            features_dir / video_id / "features.json",
            action_space,
            action_keys,
            reward_spec,
            latent_shape,
            max_frame_gap,
            max_carry_frames=max_carry_frames,
            max_uncovered_fraction=max_uncovered_fraction,
            allow_truncated_latents=allow_truncated_latents,
        )
        keys_seen.update(video.stats.pop("keys_seen"))
        missing_keys.update(video.stats["missing_keys"])
        return video

    def finish(per_video: dict[str, dict], tally: RewardTally, latent_shape: tuple) -> tuple[DatasetSchema, dict]:
        key_warnings, errors = _missing_key_findings(
            per_video, missing_keys, keys_seen, action_space, action_keys, explicit_action_space, features_dir
        )
        if errors:
            raise DataError("\n".join(errors))
        health_bar_fallback, death_warnings = _death_findings(per_video)
        for message in key_warnings + death_warnings:
            warn(message)
        mismatches = {
            video_id: s["header_video_id"] for video_id, s in per_video.items() if s["header_video_id"] not in (None, video_id)
        }
        if mismatches:
            warn(f"{len(mismatches)} features.json header video_id(s) differ from their folder name: {mismatches}")
        dropped = _dropped_summary(per_video)
        _warn_dropped(dropped, max_carry_frames, warn)
        stats, twohot_range = _reward_statistics(tally, per_video, reward_spec.death_penalty, latents_dir)
        schema = DatasetSchema(
            latent_shape=latent_shape,
            action_space=action_space,
            reward_spec=reward_spec,
            recommended_twohot_range=twohot_range,
            # The covered range, not the rows' extremes: the value range (imagination) is built from it.
            reward_min=stats["covered_min"],
            reward_max=stats["covered_max"],
            action_keys=action_keys,
            tokenizer=tokenizer,
        )
        report = _report(
            inputs={"latents_dir": str(latents_dir), "features_dir": str(features_dir)},
            splits=splits, without_features=without_features, without_latents=without_latents,
            per_video=per_video, reward_stats=stats, missing_keys=missing_keys, dropped=dropped,
            health_bar_fallback=health_bar_fallback, schema=schema, mismatches=mismatches, warnings=warnings,
            max_carry_frames=max_carry_frames, max_uncovered_fraction=max_uncovered_fraction,
            allow_truncated_latents=allow_truncated_latents,
        )
        report["videos"]["validation_chosen_by"] = "name" if validation_videos else "fraction"
        return schema, report

    return _write_prepared(output, overwrite, splits, action_space, 0, import_one, finish, progress, warn)


def prepare_tables(
    latents_dir: str | Path,
    tables_dir: str | Path,
    output: str | Path,
    mapping: Mapping | str | Path,
    events_dir: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    latent_shape: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_frame_gap: int = DEFAULT_MAX_FRAME_GAP,
    max_carry_frames: int = DEFAULT_MAX_CARRY_FRAMES,
    max_uncovered_fraction: float = DEFAULT_MAX_UNCOVERED_FRACTION,
    allow_truncated_latents: bool = False,
    validation_videos: list[str] | None = None,
    tokenizer: dict[str, str] | None = None,
    timing_offsets: tuple[int, int] = DEFAULT_TIMING_OFFSETS,
) -> dict:
    """`prepare` for per-frame tables and event streams (`data.tables`), as the `mapping` file says
    (`data.mapping`; a path or a loaded `Mapping`). The same carrying, truncation, split and staging rules as
    `prepare`; the report adds per-term reward totals, per-component action counts, events outside their
    video, null readings and the timing diagnostic (`data.timing`, offsets `timing_offsets` inclusive)."""
    from data.mapping import load_mapping
    from data.tables import find_table, find_table_videos, import_table_video, timing_signals
    from data.timing import TimingTally, checked_signals, mapping_offsets

    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    latent_shape = _check_common_options(latent_shape, validation_fraction, max_carry_frames, max_uncovered_fraction, tokenizer)
    latents_dir, tables_dir, output = Path(latents_dir), Path(tables_dir), Path(output)
    if mapping.uses_events():
        if events_dir is None:
            reader = ([f"rewards.{n}" for n, t in mapping.rewards.items() if t.match is not None]
                      + [f"actions.{n}" for n, c in mapping.actions.items() if c.from_events])[0]
            raise DataError(f"{mapping.path}: {reader} reads events: give --events-dir (the folder of <video_id>.jsonl)")
        events_dir = Path(events_dir)
        if not events_dir.is_dir():
            raise DataError(f"{events_dir}: events directory not found")
    timing = TimingTally(timing_offsets)

    warnings: list[str] = []
    warn = _warner(warnings)
    _clean_output(output, overwrite, warn)
    paired, without_table, without_latents = find_table_videos(latents_dir, tables_dir)
    splits = pair_and_split(latents_dir, (paired, without_table, without_latents), f"a table "
                            f"<id>.parquet/.jsonl/.csv in {tables_dir}", ("a table", "a table"), warn, validation_fraction, seed,
                            validation_videos)
    latent_shape = reference_latent_shape(latents_dir, paired, latent_shape)
    action_space = mapping.action_space()

    def import_one(video_id: str) -> VideoFrames:
        events = events_dir / f"{video_id}.jsonl" if mapping.uses_events() else None
        video, labels = import_table_video(
            video_id, latents_dir / f"{video_id}.npz", find_table(tables_dir, video_id), events, mapping,
            latent_shape, max_frame_gap, max_carry_frames, max_uncovered_fraction, allow_truncated_latents,
        )
        timing.add(video.latents, video.frame_index, timing_signals(labels, mapping))
        return video

    def finish(per_video: dict[str, dict], tally: RewardTally, latent_shape: tuple) -> tuple[DatasetSchema, dict]:
        dropped = _dropped_summary(per_video)
        _warn_dropped(dropped, max_carry_frames, warn)
        outside = {kind: sum((s["events"] or {}).get(kind, 0) for s in per_video.values())
                   for kind in ("before_video", "after_video", "unmatched")}
        if sum(outside.values()):
            warn(f"{sum(outside.values())} event(s) lie outside their video's table and were not used: "
                 f"{outside['before_video']} before its first frame, {outside['after_video']} after its last, "
                 f"{outside['unmatched']} in a gap of its times (report: events.outside_video)")
        timing_result = timing.result(mapping_offsets(mapping), checked_signals(mapping))
        for message in timing_result["mismatches"]:
            warn(f"timing: {message} (report: timing)")
        penalties = [t.penalty for t in mapping.rewards.values() if t.kind == "death"]
        stats, twohot_range = _reward_statistics(tally, per_video, min(penalties, default=0.0), latents_dir)
        schema = DatasetSchema(
            latent_shape=latent_shape,
            action_space=action_space,
            reward_spec=MappedRewardSpec(mapping.to_json()["rewards"]),
            recommended_twohot_range=twohot_range,
            reward_min=stats["covered_min"],
            reward_max=stats["covered_max"],
            action_keys={name: c.describe_source() for name, c in mapping.actions.items()},
            state_names=mapping.state_names,
            tokenizer=tokenizer,
            label_mapping=mapping.to_json(),
        )
        report = _tables_report(
            inputs={"latents_dir": str(latents_dir), "tables_dir": str(tables_dir),
                    "events_dir": str(events_dir) if events_dir is not None else None, "mapping": str(mapping.path)},
            splits=splits, validation_videos=validation_videos, without_table=without_table,
            without_latents=without_latents, per_video=per_video, reward_stats=stats, dropped=dropped,
            outside=outside, timing=timing_result, schema=schema, mapping=mapping, warnings=warnings,
            max_carry_frames=max_carry_frames, max_uncovered_fraction=max_uncovered_fraction,
            allow_truncated_latents=allow_truncated_latents,
        )
        return schema, report

    return _write_prepared(output, overwrite, splits, action_space, len(mapping.state), import_one, finish, progress, warn)


def _check_common_options(
    latent_shape: tuple[int, int, int] | None, validation_fraction: float, max_carry_frames: int,
    max_uncovered_fraction: float, tokenizer: dict[str, str] | None,
) -> tuple[int, int, int] | None:
    """Refuse out-of-range options of either input path before any work; returns the latent shape as ints."""
    if latent_shape is not None:
        latent_shape = tuple(int(d) for d in latent_shape)
        if len(latent_shape) != 3 or min(latent_shape) < 1:
            raise DataError(f"--latent-shape must be three positive integers (C H W), got {latent_shape}")
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    if isinstance(max_carry_frames, bool) or not isinstance(max_carry_frames, (int, np.integer)) or max_carry_frames < 0:
        raise DataError(f"--max-carry-frames must be an integer >= 0, got {max_carry_frames!r}")
    if not 0.0 <= max_uncovered_fraction <= 1.0:
        raise DataError(f"--max-uncovered-fraction must be in [0, 1], got {max_uncovered_fraction}")
    if tokenizer is not None:
        check_tokenizer(tokenizer)
    return latent_shape


def _warner(warnings: list[str]) -> Callable[[str], None]:
    def warn(message: str) -> None:
        # Logged when found (a later error does not hide it) and kept for the report.
        logger.warning(message)
        warnings.append(message)

    return warn


def _clean_output(output: Path, overwrite: bool, warn: Callable[[str], None]) -> None:
    try:
        for action in recover(output):  # leftovers of a killed run for the same output
            warn(action)
    except OSError as error:
        raise DataError(f"{output}: cannot clean up after an interrupted run ({error})") from error
    check_output(output, overwrite)


def pair_and_split(
    latents_dir: Path, found: tuple[list[str], list[str], list[str]], labels_where: str, labels: tuple[str, str],
    warn: Callable[[str], None], validation_fraction: float, seed: int, validation_videos: list[str] | None,
) -> dict[str, list[str]]:
    """The splits of the videos that have both latents and labels (`found`: paired, without labels, without
    latents); unpaired videos are warned about, and none paired is a DataError naming the folders. `labels`: the
    labels' name after "without" and after "a / has" ("features", "features.json"; "a table", "a table")."""
    paired, without_labels, without_latents = found
    plural, singular = labels
    if not paired:
        raise DataError(
            f"{latents_dir}: no video has both <id>.npz here and {labels_where} ({len(without_labels)} latents files "
            f"without {plural}, {len(without_latents)} {singular.removeprefix('a ')}s without latents)"
        )
    for ids, what in ((without_labels, f"without {plural}"), (without_latents, "without latents")):
        if ids:
            warn(f"{len(ids)} videos {what}: {ids}")
    return choose_splits(paired, validation_fraction, seed, validation_videos,
                         {**dict.fromkeys(without_labels, f"has latents but no {singular.removeprefix('a ')}"),
                          **dict.fromkeys(without_latents, f"has {singular} but no latents")})


def choose_splits(
    video_ids: list[str], validation_fraction: float, seed: int, validation_videos: list[str] | None,
    unpaired: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """The train / validation split of whole videos: the named `validation_videos` if given, else a seeded
    `validation_fraction` (`split_videos`). A named video that is not among `video_ids` is a DataError naming
    it (and, from `unpaired`, why: "has latents but no table")."""
    if not validation_videos:
        return split_videos(video_ids, validation_fraction, seed)
    named = list(dict.fromkeys(validation_videos))
    unknown = [video_id for video_id in named if video_id not in set(video_ids)]
    if unknown:
        why = "; ".join(f"'{v}' {unpaired[v]}" for v in unknown if unpaired and v in unpaired)
        raise DataError(
            f"--validation-videos: unknown video id(s) {unknown} (not among the {len(video_ids)} videos with latents "
            f"and labels{': ' + why if why else ''})"
        )
    train = sorted(set(video_ids) - set(named))
    if not train:
        raise DataError(f"--validation-videos names all {len(video_ids)} videos: none is left for training")
    return {"train": train, "validation": sorted(named)}


def read_video_list(values: list[str]) -> list[str]:
    """`--validation-videos`: video ids, where `@FILE` stands for the ids in FILE (one per line; blank lines and
    lines starting with '#' are skipped). Raises DataError naming an unreadable file."""
    ids = []
    for value in values:
        if not value.startswith("@"):
            ids.append(value)
            continue
        path = Path(value[1:])
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read the list of validation videos (--validation-videos @{path}): {error}") from error
        ids += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise DataError(f"--validation-videos: no video id given ({' '.join(values)})")
    return ids


def _reward_statistics(
    tally: RewardTally, per_video: dict[str, dict], death_penalty: float, latents_dir: Path
) -> tuple[dict, tuple[float, float]]:
    """The report's `reward` block and the recommended twohot range."""
    stats = tally.statistics()
    stats["labels_total"] = float(sum(s["reward_total"] for s in per_video.values()))
    stats["covered_min"], stats["covered_max"] = reward_range_to_cover(stats, per_video, death_penalty)
    twohot_range = recommended_twohot_range(stats["covered_min"], stats["covered_max"])
    # Unreachable while every reward is checked to fit float32; kept as the last line of defence
    # against a NaN model trained on an infinite range.
    if not (np.isfinite(stats["total"]) and np.isfinite(twohot_range).all()):
        raise DataError(f"{latents_dir}: reward total {stats['total']} or twohot range {twohot_range} is not finite")
    return stats, twohot_range


def _warn_dropped(dropped: dict, max_carry_frames: int, warn: Callable[[str], None]) -> None:
    if dropped["events"]:
        warn(
            f"{dropped['events']} reward/death event(s) on frames without a latent were dropped, not carried "
            f"(reward {dropped['reward']:.6g}, {dropped['deaths']} death(s)): {dropped['before']['events']} before "
            f"the first latent frame, {dropped['after']['events']} after the last, {dropped['long_gap']['events']} "
            f"inside gaps longer than --max-carry-frames {max_carry_frames}; in {len(dropped['videos'])} "
            f"video(s): {dropped['videos'][:5]} (report: dropped, per_video.<id>.dropped)"
        )


def _write_prepared(
    output: Path,
    overwrite: bool,
    splits: dict[str, list[str]],
    action_space: dict[str, dict],
    state_size: int,
    import_one: Callable[[str], VideoFrames],
    finish: Callable[[dict[str, dict], RewardTally, tuple[int, int, int]], tuple[DatasetSchema, dict]],
    progress: bool,
    warn: Callable[[str], None],
    episode_ends: bool = False,
) -> dict:
    """The part the input paths share: import the videos one at a time (`import_one`) straight into their
    split's shards, then `finish(per_video, tally)` gives the schema and the report, which are written beside
    the splits (`latent_shape`: the videos' `(C, H, W)`); the folder is checked with `datasets.load_from_disk` and moved into place (`data.staging`).
    Returns the report."""
    import datasets
    from datasets import DatasetInfo
    from tqdm.auto import tqdm

    split_of = {video_id: name for name, ids in splits.items() for video_id in ids}
    per_video: dict[str, dict] = {}
    tally = RewardTally()
    try:
        with StagedDirectory(output, replace=overwrite) as stage:
            writers: dict[str, SplitWriter] = {}
            features = None
            latent_shape = None
            try:
                for video_id in tqdm(sorted(split_of), desc="prepare", unit="video", disable=not progress):
                    video = import_one(video_id)
                    for message in video.warnings:
                        warn(message)
                    if features is None:
                        latent_shape = tuple(int(d) for d in video.latents.shape[1:])
                        features = dataset_features(int(np.prod(latent_shape)), action_space, state_size, episode_ends)
                        writers = {name: SplitWriter(stage.path / name, features, MAX_SHARD_BYTES) for name in SPLITS}
                    writers[split_of[video_id]].write(video_table(video, features))
                    tally.add(video.reward)
                    per_video[video_id] = video.stats
                    del video  # its latents go before the next video's are read
            except BaseException:
                for writer in writers.values():
                    writer.close()
                raise

            schema, report = finish(per_video, tally, latent_shape)
            for name in SPLITS:
                writers[name].finish(DatasetInfo(description=schema.to_json(), features=features), name)
            # What `DatasetDict.save_to_disk` writes at the top (the list of splits).
            (stage.path / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
            _check_written(stage.path, {name: writers[name].rows for name in SPLITS}, features, datasets)
            (stage.path / SCHEMA_FILE).write_text(schema.to_json())
            (stage.path / REPORT_FILE).write_text(json.dumps(report, indent=1))
            stage.commit()
    except OSError as error:
        raise DataError(
            f"{output}: cannot write the prepared dataset ({error}); {output} was left as it was"
        ) from error
    return report


def _check_written(folder: Path, rows: dict[str, int], features: "datasets.Features", datasets) -> None:  # noqa: F821
    """Open the written folder with `datasets.load_from_disk` (memory-mapped: reads the metadata, not
    the rows) and check every split's rows and columns, so a layout `datasets` would not read is
    never published. Raises DataError naming the folder."""
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as error:  # datasets raises many types here (FileNotFoundError, ArrowInvalid, JSON errors)
        raise DataError(f"{folder}: the written dataset does not load ({type(error).__name__}: {error})") from error
    for name, expected in rows.items():
        split = loaded[name]
        if len(split) != expected or split.features != features:
            raise DataError(f"{folder}: split '{name}' reads back {len(split)} rows with {split.features}, wrote {expected}")
    del loaded


def _dropped_summary(per_video: dict[str, dict]) -> dict:
    """The report's `dropped`: events, reward and deaths dropped in all videos, by where, and the videos."""

    def add(kind: str | None) -> dict:
        parts = [s["dropped"] if kind is None else s["dropped"][kind] for s in per_video.values()]
        return {
            "events": int(sum(p["events"] for p in parts)),
            "reward": float(sum(p["reward"] for p in parts)),
            "deaths": int(sum(p["deaths"] for p in parts)),
        }

    return {
        **add(None),
        **{kind: add(kind) for kind in DROP_KINDS},
        "videos": sorted(video_id for video_id, s in per_video.items() if s["dropped"]["events"]),
    }


def _report(
    *,
    inputs: dict[str, str],
    splits: dict[str, list[str]],
    without_features: list[str],
    without_latents: list[str],
    per_video: dict[str, dict],
    reward_stats: dict,
    missing_keys: Counter,
    dropped: dict,
    health_bar_fallback: dict,
    schema: DatasetSchema,
    mismatches: dict[str, str],
    warnings: list[str],
    max_carry_frames: int,
    max_uncovered_fraction: float,
    allow_truncated_latents: bool,
) -> dict:
    """`prepare_report.json` (docs/data.md lists its fields)."""

    def total(key: str) -> int:
        return int(sum(stats_[key] for stats_ in per_video.values()))

    def frames_of(ids: list[str]) -> int:
        return int(sum(per_video[video_id]["frames"] for video_id in ids))

    return {
        "inputs": inputs,
        "videos": {"total": len(per_video), **{name: splits[name] for name in SPLITS}},
        "videos_without_features": without_features,
        "videos_without_latents": without_latents,
        "frames": {
            "total": total("frames"),
            **{name: frames_of(splits[name]) for name in SPLITS},
            "features_entries": total("feature_frames"),
            "without_latent": total("frames_without_latent"),
            "without_features": total("frames_without_features"),
            "actions_lost_without_latent": total("actions_lost_without_latent"),
        },
        "gaps": total("gaps"),
        "deaths": {
            "total": total("deaths"),
            "videos_using_is_dead": sum(s["death_rule"] != "health_bar" for s in per_video.values()),
            "from_is_dead": total("deaths_from_is_dead"),
            "from_health_bar": total("deaths_from_health_bar"),
            "health_bar_fallback": health_bar_fallback,
            "health_bar_rule_total": total("health_bar_deaths"),
            "merged_onto_one_frame": total("merged_deaths"),
        },
        "max_carry_frames": max_carry_frames,
        "carried": {
            "events": total("carried_events"),
            "reward": float(sum(s["carried_reward"] for s in per_video.values())),
            "deaths": total("carried_deaths"),
        },
        "dropped": dropped,
        "truncated_latents": {
            "videos": sorted(video_id for video_id, s in per_video.items() if s["coverage"]["truncated"]),
            "max_uncovered_fraction": max_uncovered_fraction,
            "allowed": allow_truncated_latents,
        },
        "missing_keys": dict(sorted(missing_keys.items())),
        "reward": reward_stats,
        "recommended_twohot_range": list(schema.recommended_twohot_range),
        "schema": json.loads(schema.to_json()),
        "video_id_mismatches": mismatches,
        "warnings": warnings,
        "per_video": per_video,
    }


def _tables_report(
    *,
    inputs: dict,
    splits: dict[str, list[str]],
    validation_videos: list[str] | None,
    without_table: list[str],
    without_latents: list[str],
    per_video: dict[str, dict],
    reward_stats: dict,
    dropped: dict,
    outside: dict,
    timing: dict,
    schema: DatasetSchema,
    mapping: Mapping,
    warnings: list[str],
    max_carry_frames: int,
    max_uncovered_fraction: float,
    allow_truncated_latents: bool,
) -> dict:
    """`prepare_report.json` of the table + event path (docs/data.md lists its fields)."""

    def total(key: str) -> int:
        return int(sum(s[key] for s in per_video.values()))

    def add(parts: list[dict]) -> dict:
        """Sum nested dicts of numbers (the per-video term and component blocks) key by key."""
        out: dict = {}
        for part in parts:
            for key, value in part.items():
                if isinstance(value, dict):
                    out[key] = add([out.get(key, {}), value])
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[key] = out.get(key, 0) + value
                else:
                    out[key] = value
        return out

    terms = {name: add([s["reward_terms"][name] for s in per_video.values()]) for name in mapping.rewards}
    actions = {name: add([s["actions"][name] for s in per_video.values()]) for name in mapping.actions}
    for name, term in mapping.rewards.items():  # offsets are settings, not counts
        terms[name]["offset"] = term.offset
    for name, component in mapping.actions.items():
        actions[name]["offset"] = component.offset
    null_readings: Counter = Counter()
    for s in per_video.values():
        null_readings.update(s["null_readings"])
    events = {
        "read": int(sum((s["events"] or {}).get("read", 0) for s in per_video.values())),
        "mapped": int(sum((s["events"] or {}).get("mapped", 0) for s in per_video.values())),
        "outside_video": outside,
    }
    frames = {name: int(sum(per_video[v]["frames"] for v in splits[name])) for name in SPLITS}
    state = {
        "names": mapping.state_names,
        "known_fraction": {
            name: float(sum(s["state_known_fraction"][name] * s["frames"] for s in per_video.values()) / max(total("frames"), 1))
            for name in mapping.state
        },
    }
    return {
        "inputs": inputs,
        "videos": {"total": len(per_video), **{name: splits[name] for name in SPLITS},
                   "validation_chosen_by": "name" if validation_videos else "fraction"},
        "videos_without_table": without_table,
        "videos_without_latents": without_latents,
        "frames": {
            "total": total("frames"), **frames,
            "table_rows": total("table_rows"),
            "without_latent": total("frames_without_latent"),
            "without_table": total("frames_without_table"),
            "without_action": total("frames_without_action"),
        },
        "gaps": total("gaps"),
        "deaths": {"total": total("deaths"), "kept": total("deaths_kept"), "merged_onto_one_frame": total("merged_deaths")},
        "reward_terms": terms,
        "actions": actions,
        "state": state,
        "events": events,
        "null_readings": dict(sorted(null_readings.items())),
        "max_carry_frames": max_carry_frames,
        "carried": {
            "events": total("carried_events"),
            "reward": float(sum(s["carried_reward"] for s in per_video.values())),
            "deaths": total("carried_deaths"),
        },
        "dropped": dropped,
        "truncated_latents": {
            "videos": sorted(video_id for video_id, s in per_video.items() if s["coverage"]["truncated"]),
            "max_uncovered_fraction": max_uncovered_fraction,
            "allowed": allow_truncated_latents,
        },
        "reward": reward_stats,
        "recommended_twohot_range": list(schema.recommended_twohot_range),
        "timing": timing,
        "tokenizer": schema.tokenizer,
        "schema": json.loads(schema.to_json()),
        "warnings": warnings,
        "per_video": per_video,
    }


def parse_action_space(text: str) -> tuple[dict[str, dict], dict[str, str]]:
    """`--action-space`: JSON (inline or a file path) -> `(action_space, action_keys)`.

    A component may name its features key (`"key"`, default: the component name, `movement_slice`
    for `movement`). Raises DataError naming the file (or `--action-space`) and the problem.
    """
    source = Path(text)
    try:
        is_file = source.is_file()
    except (OSError, ValueError):  # inline JSON longer than a file name may be, or with a NUL byte
        is_file = False
    where = str(source) if is_file else "--action-space"
    try:
        spec = json.loads(source.read_text() if is_file else text)
    except RecursionError as error:
        raise DataError(f"{where}: not a valid action space (JSON nested too deeply)") from error
    except (ValueError, UnicodeDecodeError) as error:
        hint = "" if is_file else " (neither a JSON file nor valid inline JSON)"
        raise DataError(f"{where}: not valid JSON{hint}: {error}") from error
    except OSError as error:
        raise DataError(f"{where}: cannot read ({error.strerror or error})") from error
    if not isinstance(spec, dict) or not all(isinstance(component, dict) for component in spec.values()):
        raise DataError(f'{where}: expected a JSON object of components, e.g. {{"movement": {{"type": "categorical", "n": 18}}}}')
    keys = {}
    for name, component in spec.items():
        if "key" in component:
            key = component.pop("key")
            if not isinstance(key, str) or not key:
                raise DataError(f"{where}: component '{name}': 'key' must be a features key (a string), got {key!r}")
            keys[name] = key
    try:
        validate_action_space(spec)
    except ValueError as error:
        raise DataError(f"{where}: {error}") from error
    return spec, {**default_action_keys(spec), **keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--latents-dir", help="folder of <video_id>.npz packed latents (with --features-dir or --tables-dir)")
    parser.add_argument("--episodes", help="a recording of `python -m envs.record` (with --tokenizer), instead of latents")
    parser.add_argument("--tokenizer", help="the tokenizer folder that encodes --episodes (save_pretrained)")
    parser.add_argument("--device", help="--episodes: the device that encodes (default: cuda when available, else cpu)")
    parser.add_argument("--features-dir", help="folder of <video_id>/features.json (or give --tables-dir)")
    parser.add_argument("--tables-dir", help="folder of per-frame tables <video_id>.parquet/.jsonl/.csv (with --mapping)")
    parser.add_argument("--events-dir", help="folder of event streams <video_id>.jsonl (with --tables-dir)")
    parser.add_argument("--mapping", help="the mapping file (YAML) of --tables-dir: rewards, actions, offsets, state")
    parser.add_argument("--output", required=True, help="output folder (DatasetDict + report)")
    parser.add_argument("--validation-fraction", type=float, default=None, help="share of whole videos in validation (default 0.1)")
    parser.add_argument(
        "--validation-videos", nargs="+", metavar="ID",
        help="the validation videos by id, or @FILE with one id per line (instead of --validation-fraction)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--gold-scale", type=float, default=None, help=f"features.json only (default {RewardSpec.gold_scale})")
    parser.add_argument("--death-penalty", type=float, default=None, help=f"features.json only (default {RewardSpec.death_penalty})")
    parser.add_argument("--death-min-frames", type=int, default=None, help=f"features.json only (default {RewardSpec.death_min_frames})")
    parser.add_argument("--latent-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="declared latent shape")
    parser.add_argument(
        "--action-space",
        help='features.json only: JSON or a JSON file: {"movement": {"type": "categorical", "n": 18, "key": "movement_slice"}, '
        '"ability_q": {"type": "binary"}, ...} ("key" defaults to the component name)',
    )
    parser.add_argument("--tokenizer-name", help="the tokenizer that made the latents, recorded in the schema (with --tokenizer-hash)")
    parser.add_argument("--tokenizer-hash", help="its hash (e.g. the commit or a checksum of its weights)")
    parser.add_argument(
        "--timing-offsets", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
        help=f"tables only: the frame offsets the timing diagnostic scores (default {DEFAULT_TIMING_OFFSETS[0]} "
        f"{DEFAULT_TIMING_OFFSETS[1]})",
    )
    parser.add_argument(
        "--max-frame-gap", type=int, default=DEFAULT_MAX_FRAME_GAP,
        help="largest jump between consecutive frame numbers of a video; a larger one is refused as a wrong frame number",
    )
    parser.add_argument(
        "--max-carry-frames", type=int, default=DEFAULT_MAX_CARRY_FRAMES,
        help="a reward or death on a frame without a latent moves to the next latent frame only across a gap of at "
        "most this many missing frames; events in a longer gap, before the first or after the last latent frame "
        f"are dropped and reported (default {DEFAULT_MAX_CARRY_FRAMES}, 150 ms at 20 fps)",
    )
    parser.add_argument(
        "--max-uncovered-fraction", type=float, default=DEFAULT_MAX_UNCOVERED_FRACTION,
        help="a video with more than this fraction of its labelled frames outside its latents' frame span "
        f"(a truncated latent pack) is an error (default {DEFAULT_MAX_UNCOVERED_FRACTION})",
    )
    parser.add_argument(
        "--allow-truncated-latents", action="store_true",
        help="import truncated latent packs anyway (a warning; the events outside the latents are dropped and reported)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset (only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.episodes is not None:
        return _main_episodes(parser, args)
    if args.latents_dir is None:
        parser.error("give --latents-dir with --features-dir or --tables-dir (or --episodes with --tokenizer)")
    tables = args.tables_dir is not None
    if tables == (args.features_dir is not None):
        parser.error("give exactly one of --features-dir (features.json) or --tables-dir (tables + --mapping)")
    if tables:
        if args.mapping is None:
            parser.error("--tables-dir needs --mapping (the mapping file: rewards, actions, offsets, state)")
        given = [f"--{name.replace('_', '-')}" for name in ("gold_scale", "death_penalty", "death_min_frames", "action_space")
                 if getattr(args, name) is not None]
        if given:
            parser.error(f"{', '.join(given)} apply to --features-dir only; with --tables-dir the mapping file declares them")
    else:
        given = [flag for flag, value in (("--events-dir", args.events_dir), ("--mapping", args.mapping),
                                          ("--timing-offsets", args.timing_offsets)) if value is not None]
        if given:
            parser.error(f"{', '.join(given)} apply to --tables-dir only")
        try:
            reward_spec = RewardSpec(
                *(RewardSpec.__dataclass_fields__[name].default if getattr(args, name) is None else getattr(args, name)
                  for name in ("gold_scale", "death_penalty", "death_min_frames"))
            )
        except ValueError as error:
            parser.error(str(error))
    if args.validation_videos and args.validation_fraction is not None:
        parser.error("give --validation-videos or --validation-fraction, not both")
    if (args.tokenizer_name is None) != (args.tokenizer_hash is None):
        parser.error("--tokenizer-name and --tokenizer-hash go together (a name alone cannot tell a retrained tokenizer)")
    if args.timing_offsets is not None and args.timing_offsets[0] > args.timing_offsets[1]:
        parser.error(f"--timing-offsets LOW HIGH needs LOW <= HIGH, got {args.timing_offsets}")
    if args.max_frame_gap < 1:
        parser.error(f"--max-frame-gap must be >= 1, got {args.max_frame_gap}")
    if args.max_carry_frames < 0:
        parser.error(f"--max-carry-frames must be >= 0, got {args.max_carry_frames}")
    if not 0.0 <= args.max_uncovered_fraction <= 1.0:  # also refuses nan
        parser.error(f"--max-uncovered-fraction must be in [0, 1], got {args.max_uncovered_fraction}")

    # prepare() logs its warnings (also in the report); on the command line they go to stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("data.prepare: warning: %(message)s"))
    logger.addHandler(handler)
    try:
        common = dict(
            validation_fraction=0.1 if args.validation_fraction is None else args.validation_fraction,
            validation_videos=read_video_list(args.validation_videos) if args.validation_videos else None,
            seed=args.seed,
            latent_shape=tuple(args.latent_shape) if args.latent_shape else None,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            max_frame_gap=args.max_frame_gap,
            max_carry_frames=args.max_carry_frames,
            max_uncovered_fraction=args.max_uncovered_fraction,
            allow_truncated_latents=args.allow_truncated_latents,
            tokenizer={"name": args.tokenizer_name, "hash": args.tokenizer_hash} if args.tokenizer_name else None,
        )
        if tables:
            report = prepare_tables(
                args.latents_dir, args.tables_dir, args.output, args.mapping, events_dir=args.events_dir,
                timing_offsets=tuple(args.timing_offsets) if args.timing_offsets else DEFAULT_TIMING_OFFSETS, **common,
            )
        else:
            action_space, action_keys = parse_action_space(args.action_space) if args.action_space else (None, None)
            report = prepare(
                args.latents_dir, args.features_dir, args.output, reward_spec=reward_spec, action_space=action_space,
                action_keys=action_keys, **common,
            )
    except DataError as error:
        print(f"data.prepare: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"data.prepare: interrupted; {args.output} was left as it was", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
    print(
        f"wrote {args.output}: {report['videos']['total']} videos, {report['frames']['total']} frames, "
        f"{report['deaths']['total']} deaths, {report['carried']['events']} carried events, "
        f"{report['dropped']['events']} dropped events, "
        f"twohot range {report['recommended_twohot_range']}"
    )
    if tables:
        from data.timing import format_table

        print(format_table(report["timing"]))
    return 0


def _main_episodes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`--episodes DIR --tokenizer TOK`: the recording path of `main`."""
    from data.episodes import prepare_episodes

    if args.tokenizer is None:
        parser.error("--episodes needs --tokenizer (the tokenizer folder that encodes its frames)")
    given = [f"--{name.replace('_', '-')}" for name in ("latents_dir", "features_dir", "tables_dir", "events_dir", "mapping",
                                                         "action_space", "tokenizer_name", "tokenizer_hash")
             if getattr(args, name) is not None]
    if given:
        parser.error(f"{', '.join(given)} do not apply to --episodes (the recording and its tokenizer say it all)")
    if args.validation_videos and args.validation_fraction is not None:
        parser.error("give --validation-videos or --validation-fraction, not both")
    try:
        report = prepare_episodes(
            args.episodes, args.tokenizer, args.output,
            validation_fraction=0.1 if args.validation_fraction is None else args.validation_fraction,
            validation_videos=read_video_list(args.validation_videos) if args.validation_videos else None,
            seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress, device=args.device)
    except DataError as error:
        print(f"data.prepare: error: {error}", file=sys.stderr)
        return 1
    episodes = report["episodes"]
    print(f"wrote {args.output}: {report['videos']['total']} episodes ({episodes['terminated']} terminated, "
          f"{episodes['truncated']} truncated), {report['frames']['total']} frames, mean return "
          f"{episodes['return_mean']:.3g}, tokenizer {report['tokenizer']['name']} ({report['tokenizer']['hash']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
