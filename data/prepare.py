"""`python -m data.prepare`: the user's files -> a `DatasetDict` on disk + `prepare_report.json`.

    python -m data.prepare --latents-dir L --features-dir F --output OUT

One row per frame that has a latent, sorted by (video_id, frame_index); splits `train` and
`validation` by whole videos (seeded). Each video is turned into an Arrow table and streamed to
disk, so memory holds one video at a time whatever the dataset's size.

Nothing is lost or silently wrong: every value read is validated (`data.importers`), every error
names the file (and the frame and key) and ends the command with `data.prepare: error: ...` and
status 1, warnings (missing keys, partial `is_dead`, unpaired videos) go to stderr and the report,
and the output is built beside `--output` and moved into place only when complete
(`data.staging`), so a failed or killed run leaves the previous dataset (or nothing) in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data.importers import DEFAULT_MAX_FRAME_GAP, DataError, VideoFrames, find_videos, import_video, read_latent_shape
from data.schema import (
    REPORT_FILE,
    SCHEMA_FILE,
    DatasetSchema,
    RewardSpec,
    default_action_keys,
    default_action_space,
    recommended_twohot_range,
    validate_action_space,
)
from data.staging import StagedDirectory, recover

SPLITS = ("train", "validation")
logger = logging.getLogger("data.prepare")


def dataset_features(latent_size: int, action_space: dict[str, dict]) -> "datasets.Features":  # noqa: F821
    """The column types of a prepared split (docs/data.md)."""
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


def reward_statistics(rewards: np.ndarray) -> dict:
    """Summary of per-frame rewards (after carrying) for the report."""
    nonzero = rewards[rewards != 0]
    stats = {
        "total": float(rewards.sum(dtype=np.float64)),
        "min": float(rewards.min()) if len(rewards) else 0.0,
        "max": float(rewards.max()) if len(rewards) else 0.0,
        "mean": float(rewards.mean(dtype=np.float64)) if len(rewards) else 0.0,
        "nonzero_frames": int(len(nonzero)),
        "nonzero_fraction": float(len(nonzero) / max(len(rewards), 1)),
        "positive_frames": int((nonzero > 0).sum()),
        "negative_frames": int((nonzero < 0).sum()),
    }
    if len(nonzero):
        stats["nonzero_percentiles"] = {f"p{p}": float(np.percentile(nonzero, p)) for p in (5, 50, 95)}
    return stats


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
) -> dict:
    """Import every video, write the `DatasetDict`, the schema and the report; return the report.

    `latent_shape` declares `(C, H, W)`; without it the shape most videos have is the reference and
    a video that differs is named. Raises DataError (naming the file, and the frame and key where
    there is one) on bad input. The output is built beside `output` and moved into place only when
    complete: on any failure `output` is left exactly as it was (`data.staging`). Warnings (missing
    keys, partial `is_dead`, unpaired videos) go to the `data.prepare` logger and to the report's
    `warnings`.
    """
    from datasets import Dataset, DatasetDict, DatasetInfo, NamedSplit
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

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
    if latent_shape is not None:
        latent_shape = tuple(int(d) for d in latent_shape)
        if len(latent_shape) != 3 or min(latent_shape) < 1:
            raise DataError(f"--latent-shape must be three positive integers (C H W), got {latent_shape}")
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    latents_dir, features_dir, output = Path(latents_dir), Path(features_dir), Path(output)

    warnings: list[str] = []

    def warn(message: str) -> None:
        # Logged when found (a later error does not hide it) and kept for the report.
        logger.warning(message)
        warnings.append(message)

    try:
        for action in recover(output):  # leftovers of a killed run for the same output
            warn(action)
    except OSError as error:
        raise DataError(f"{output}: cannot clean up after an interrupted run ({error})") from error
    check_output(output, overwrite)
    paired, without_features, without_latents = find_videos(latents_dir, features_dir)
    if not paired:
        raise DataError(
            f"{latents_dir}: no video has both <id>.npz here and <id>/features.json in {features_dir} "
            f"({len(without_features)} latents files without features, {len(without_latents)} features without latents)"
        )
    for ids, what in ((without_features, "without features"), (without_latents, "without latents")):
        if ids:
            warn(f"{len(ids)} videos {what}: {ids}")
    splits = split_videos(paired, validation_fraction, seed)
    split_of = {video_id: name for name, ids in splits.items() for video_id in ids}
    latent_shape = reference_latent_shape(latents_dir, paired, latent_shape)

    per_video: dict[str, dict] = {}
    rewards: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    missing_keys: Counter = Counter()
    keys_seen: set[str] = set()
    try:
        with StagedDirectory(output, replace=overwrite) as stage:
            building = stage.path / ".building"
            building.mkdir()
            writers: dict[str, ArrowWriter] = {}
            features = None
            try:
                for video_id in tqdm(paired, desc="prepare", unit="video", disable=not progress):
                    video = import_video(
                        video_id,
                        latents_dir / f"{video_id}.npz",
                        features_dir / video_id / "features.json",
                        action_space,
                        action_keys,
                        reward_spec,
                        latent_shape,
                        max_frame_gap,
                    )
                    if features is None:
                        latent_shape = tuple(int(d) for d in video.latents.shape[1:])
                        features = dataset_features(int(np.prod(latent_shape)), action_space)
                        # writer_batch_size: large record batches keep most windows inside one Arrow chunk.
                        writers = {
                            name: ArrowWriter(features=features, path=str(building / f"{name}.arrow"), writer_batch_size=65536)
                            for name in SPLITS
                        }
                    writers[split_of[video_id]].write_table(video_table(video, features))
                    rewards[split_of[video_id]].append(video.reward)
                    keys_seen.update(video.stats.pop("keys_seen"))
                    missing_keys.update(video.stats["missing_keys"])
                    per_video[video_id] = video.stats
                for writer in writers.values():
                    writer.finalize()
            finally:
                for writer in writers.values():
                    writer.close()

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

            all_rewards = np.concatenate([r for name in SPLITS for r in rewards[name]])
            stats = reward_statistics(all_rewards)
            twohot_range = recommended_twohot_range(stats["min"], stats["max"])
            # Unreachable while every reward is checked to fit float32; kept as the last line of defence
            # against a NaN model trained on an infinite range.
            if not (np.isfinite(stats["total"]) and np.isfinite(twohot_range).all()):
                raise DataError(
                    f"{latents_dir}: reward total {stats['total']} or twohot range {twohot_range} is not finite"
                )
            schema = DatasetSchema(
                latent_shape=latent_shape,
                action_space=action_space,
                reward_spec=reward_spec,
                recommended_twohot_range=twohot_range,
                reward_min=stats["min"],
                reward_max=stats["max"],
                action_keys=action_keys,
            )
            dataset_dict = DatasetDict(
                {
                    name: Dataset.from_file(
                        str(building / f"{name}.arrow"),
                        info=DatasetInfo(description=schema.to_json(), features=features),
                        split=NamedSplit(name),
                    )
                    for name in SPLITS
                }
            )
            # An empty split (one video, or no validation) must still be written as one (empty) shard:
            # with zero shards `load_from_disk` fails.
            empty = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
            dataset_dict.save_to_disk(str(stage.path), num_shards=empty or None)
            del dataset_dict
            shutil.rmtree(building)
            (stage.path / SCHEMA_FILE).write_text(schema.to_json())
            report = _report(
                inputs={"latents_dir": str(latents_dir), "features_dir": str(features_dir)},
                splits=splits, without_features=without_features, without_latents=without_latents,
                per_video=per_video, rewards=rewards, reward_stats=stats, missing_keys=missing_keys,
                health_bar_fallback=health_bar_fallback, schema=schema, mismatches=mismatches, warnings=warnings,
            )
            (stage.path / REPORT_FILE).write_text(json.dumps(report, indent=1))
            stage.commit()
    except OSError as error:
        raise DataError(
            f"{output}: cannot write the prepared dataset ({error}); {output} was left as it was"
        ) from error
    return report


def _report(
    *,
    inputs: dict[str, str],
    splits: dict[str, list[str]],
    without_features: list[str],
    without_latents: list[str],
    per_video: dict[str, dict],
    rewards: dict[str, list[np.ndarray]],
    reward_stats: dict,
    missing_keys: Counter,
    health_bar_fallback: dict,
    schema: DatasetSchema,
    mismatches: dict[str, str],
    warnings: list[str],
) -> dict:
    """`prepare_report.json` (docs/data.md lists its fields)."""

    def total(key: str) -> int:
        return int(sum(stats_[key] for stats_ in per_video.values()))

    return {
        "inputs": inputs,
        "videos": {"total": len(per_video), **{name: splits[name] for name in SPLITS}},
        "videos_without_features": without_features,
        "videos_without_latents": without_latents,
        "frames": {
            "total": int(sum(len(r) for name in SPLITS for r in rewards[name])),
            **{name: int(sum(len(r) for r in rewards[name])) for name in SPLITS},
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
        "carried": {
            "events": total("carried_events"),
            "reward": float(sum(s["carried_reward"] for s in per_video.values())),
            "deaths": total("carried_deaths"),
        },
        "missing_keys": dict(sorted(missing_keys.items())),
        "reward": reward_stats,
        "recommended_twohot_range": list(schema.recommended_twohot_range),
        "schema": json.loads(schema.to_json()),
        "video_id_mismatches": mismatches,
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
    parser.add_argument("--latents-dir", required=True, help="folder of <video_id>.npz packed latents")
    parser.add_argument("--features-dir", required=True, help="folder of <video_id>/features.json")
    parser.add_argument("--output", required=True, help="output folder (DatasetDict + report)")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--gold-scale", type=float, default=RewardSpec.gold_scale)
    parser.add_argument("--death-penalty", type=float, default=RewardSpec.death_penalty)
    parser.add_argument("--death-min-frames", type=int, default=RewardSpec.death_min_frames)
    parser.add_argument("--latent-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="declared latent shape")
    parser.add_argument(
        "--action-space",
        help='JSON or a JSON file: {"movement": {"type": "categorical", "n": 18, "key": "movement_slice"}, '
        '"ability_q": {"type": "binary"}, ...} ("key" defaults to the component name)',
    )
    parser.add_argument(
        "--max-frame-gap", type=int, default=DEFAULT_MAX_FRAME_GAP,
        help="largest jump between consecutive frame numbers of a video; a larger one is refused as a wrong frame number",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset (only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        reward_spec = RewardSpec(args.gold_scale, args.death_penalty, args.death_min_frames)
    except ValueError as error:
        parser.error(str(error))
    if args.max_frame_gap < 1:
        parser.error(f"--max-frame-gap must be >= 1, got {args.max_frame_gap}")

    # prepare() logs its warnings (also in the report); on the command line they go to stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("data.prepare: warning: %(message)s"))
    logger.addHandler(handler)
    try:
        action_space, action_keys = parse_action_space(args.action_space) if args.action_space else (None, None)
        report = prepare(
            args.latents_dir,
            args.features_dir,
            args.output,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            reward_spec=reward_spec,
            action_space=action_space,
            action_keys=action_keys,
            latent_shape=tuple(args.latent_shape) if args.latent_shape else None,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            max_frame_gap=args.max_frame_gap,
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
        f"twohot range {report['recommended_twohot_range']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
