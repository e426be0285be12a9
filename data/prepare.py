"""`python -m data.prepare`: the user's files -> a `DatasetDict` on disk + `prepare_report.json`.

    python -m data.prepare --latents-dir L --features-dir F --output OUT

One row per frame that has a latent, sorted by (video_id, frame_index); splits `train` and
`validation` by whole videos (seeded). Each video is turned into an Arrow table and streamed to
disk, so memory holds one video at a time whatever the dataset's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data.importers import DataError, VideoFrames, find_videos, import_video
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

SPLITS = ("train", "validation")


def dataset_features(latent_size: int, action_space: dict[str, dict]) -> "datasets.Features":  # noqa: F821
    """The column types of a prepared split (DESIGN.md section 5)."""
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


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DataError(f"{output}: output folder exists and is not empty (pass --overwrite to replace it)")
        if not (output / "dataset_dict.json").exists() and not (output / ".building").exists():
            raise DataError(f"{output}: refusing to overwrite a folder that is not a prepared dataset")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


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
) -> dict:
    """Import every video, write the `DatasetDict`, the schema and the report; return the report.

    `latent_shape` declares `(C, H, W)`; without it the first video's shape is the reference and
    every other video must match. Raises DataError (naming the file) on bad input.
    """
    from datasets import Dataset, DatasetDict, DatasetInfo, NamedSplit
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    reward_spec = reward_spec or RewardSpec()
    action_space = action_space or default_action_space()
    validate_action_space(action_space)
    action_keys = action_keys or default_action_keys(action_space)
    output = Path(output)

    paired, without_features, without_latents = find_videos(latents_dir, features_dir)
    if not paired:
        raise DataError(
            f"{latents_dir}: no video has both <id>.npz here and <id>/features.json in {features_dir} "
            f"({len(without_features)} latents files without features, {len(without_latents)} features without latents)"
        )
    splits = split_videos(paired, validation_fraction, seed)
    split_of = {video_id: name for name, ids in splits.items() for video_id in ids}
    _prepare_output(output, overwrite)
    building = output / ".building"
    building.mkdir()

    writers: dict[str, ArrowWriter] = {}
    features = None
    per_video: dict[str, dict] = {}
    rewards: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    missing_keys: Counter = Counter()
    try:
        for video_id in tqdm(paired, desc="prepare", unit="video", disable=not progress):
            video = import_video(
                video_id,
                Path(latents_dir) / f"{video_id}.npz",
                Path(features_dir) / video_id / "features.json",
                action_space,
                action_keys,
                reward_spec,
                latent_shape,
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
            per_video[video_id] = video.stats
            missing_keys.update(video.stats.pop("missing_keys"))
        for writer in writers.values():
            writer.finalize()
    finally:
        for writer in writers.values():
            writer.close()

    all_rewards = np.concatenate([r for name in SPLITS for r in rewards[name]])
    stats = reward_statistics(all_rewards)
    schema = DatasetSchema(
        latent_shape=latent_shape,
        action_space=action_space,
        reward_spec=reward_spec,
        recommended_twohot_range=recommended_twohot_range(stats["min"], stats["max"]),
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
    dataset_dict.save_to_disk(str(output), num_shards=empty or None)
    del dataset_dict
    shutil.rmtree(building)
    (output / SCHEMA_FILE).write_text(schema.to_json())

    def total(key: str) -> int:
        return int(sum(stats_[key] for stats_ in per_video.values()))

    report = {
        "inputs": {"latents_dir": str(latents_dir), "features_dir": str(features_dir)},
        "videos": {"total": len(paired), **{name: splits[name] for name in SPLITS}},
        "videos_without_features": without_features,
        "videos_without_latents": without_latents,
        "frames": {
            "total": int(len(all_rewards)),
            **{name: int(sum(len(r) for r in rewards[name])) for name in SPLITS},
            "features_entries": total("feature_frames"),
            "without_latent": total("frames_without_latent"),
            "without_features": total("frames_without_features"),
            "actions_lost_without_latent": total("actions_lost_without_latent"),
        },
        "gaps": total("gaps"),
        "deaths": {
            "total": total("deaths"),
            "videos_using_is_dead": sum(s["death_rule"] == "is_dead" for s in per_video.values()),
            "from_is_dead": int(sum(s["deaths"] for s in per_video.values() if s["death_rule"] == "is_dead")),
            "from_health_bar": int(sum(s["deaths"] for s in per_video.values() if s["death_rule"] == "health_bar")),
            "health_bar_rule_total": total("health_bar_deaths"),
            "merged_onto_one_frame": total("merged_deaths"),
        },
        "carried": {
            "events": total("carried_events"),
            "reward": float(sum(s["carried_reward"] for s in per_video.values())),
            "deaths": total("carried_deaths"),
        },
        "missing_keys": dict(sorted(missing_keys.items())),
        "reward": stats,
        "recommended_twohot_range": list(schema.recommended_twohot_range),
        "schema": json.loads(schema.to_json()),
        "video_id_mismatches": {
            video_id: s["header_video_id"]
            for video_id, s in per_video.items()
            if s["header_video_id"] not in (None, video_id)
        },
        "per_video": per_video,
    }
    (output / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report


def _parse_action_space(text: str) -> tuple[dict[str, dict], dict[str, str]]:
    """`--action-space`: JSON (inline or a file path); a component may name its features key."""
    source = Path(text)
    spec = json.loads(source.read_text() if source.is_file() else text)
    keys = {name: component.pop("key") for name, component in spec.items() if "key" in component}
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    action_space, action_keys = _parse_action_space(args.action_space) if args.action_space else (None, None)
    try:
        report = prepare(
            args.latents_dir,
            args.features_dir,
            args.output,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            reward_spec=RewardSpec(args.gold_scale, args.death_penalty, args.death_min_frames),
            action_space=action_space,
            action_keys=action_keys,
            latent_shape=tuple(args.latent_shape) if args.latent_shape else None,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except DataError as error:
        print(f"data.prepare: error: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: {report['videos']['total']} videos, {report['frames']['total']} frames, "
        f"{report['deaths']['total']} deaths, {report['carried']['events']} carried events, "
        f"twohot range {report['recommended_twohot_range']}"
    )
    for key in ("videos_without_features", "videos_without_latents"):
        if report[key]:
            print(f"warning: {len(report[key])} {key.replace('_', ' ')}: {report[key]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
