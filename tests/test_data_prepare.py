"""data.importers + data.prepare on the real fixtures and on bad input (input formats and the prepared dataset, docs/data.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.importers import DataError, death_onsets_from_health_bar, death_onsets_from_is_dead, load_packed_latents
from data.prepare import main, prepare, split_videos
from data.schema import RewardSpec, default_action_space, load_prepared, recommended_twohot_range
from modeling_dreamer.symlog import symlog
from data.windows import WindowDataset
from tests.data_helpers import assert_matches_truth, expected_rewards, features_frames, fixtures_dir, load_truth


@pytest.fixture(scope="module", params=["lol_real", "lol_real_is_dead"])
def prepared_fixture(request, tmp_path_factory):
    root = fixtures_dir() / request.param
    output = tmp_path_factory.mktemp(request.param) / "prepared"
    report = prepare(root / "latents", root / "features", output, progress=False)
    dataset_dict, schema = load_prepared(output)
    return root, report, dataset_dict, schema


def test_fixture_rewards_deaths_actions_match_truth(prepared_fixture):
    root, report, dataset_dict, schema = prepared_fixture
    truths = [load_truth(root, p.stem) for p in (root / "truth").glob("*.json")]
    assert assert_matches_truth(root, dataset_dict, schema.action_space, schema.action_keys) == len(truths)
    assert report["deaths"]["total"] == sum(len(t["death_onsets"]) for t in truths)
    expected_total = sum(0.01 * sum(t["gold_events"].values()) - 10 * len(t["death_onsets"]) for t in truths)
    assert report["reward"]["total"] == pytest.approx(expected_total, abs=1e-3)
    # No true event falls on a frame without a latent in these segments: nothing carried or dropped.
    assert report["dropped"]["events"] == 0 and report["carried"]["events"] == 0
    assert report["truncated_latents"]["videos"] == []
    uses_is_dead = root.name == "lol_real_is_dead"
    assert report["deaths"]["videos_using_is_dead"] == (len(truths) if uses_is_dead else 0)


def test_fixture_report_and_schema(prepared_fixture):
    root, report, dataset_dict, schema = prepared_fixture
    truths = [load_truth(root, p.stem) for p in (root / "truth").glob("*.json")]
    assert report["frames"]["total"] == sum(t["latent_frames"] for t in truths)
    assert report["frames"]["without_latent"] == sum(len(t["missing_latent_frames"]) for t in truths)
    assert schema.latent_shape == (8, 4, 4)
    assert list(schema.action_space) == list(default_action_space())
    low, high = schema.recommended_twohot_range
    assert low < symlog(report["reward"]["min"]) and high > symlog(report["reward"]["max"])
    # The schema travels inside the split metadata too.
    assert json.loads(dataset_dict["train"].info.description)["latent_shape"] == [8, 4, 4]
    # Dtypes of the stored columns.
    features = dataset_dict["train"].features
    assert features["latents"].feature.dtype == "float16" and features["latents"].length == 128
    assert features["frame_index"].dtype == "int32" and features["death"].dtype == "bool"


def test_fixture_windows_belong_to_their_frames(prepared_fixture):
    root, _, dataset_dict, schema = prepared_fixture
    windows_after_gap = 0
    for split in dataset_dict.values():
        if len(split) == 0:  # one video: empty validation split, still a valid (empty) window set
            assert len(WindowDataset(split, window_length=32)) == 0
            continue
        windows = WindowDataset(split, window_length=32, stride=16)
        frame_sets = {}
        for i in range(len(windows)):
            window = windows[i]
            video_id, frame_index = window["video_id"], window["frame_index"]
            np.testing.assert_array_equal(np.diff(frame_index), 1)
            if video_id not in frame_sets:
                truth = load_truth(root, video_id)
                rows = np.array(sorted(set(range(truth["num_frames"])) - set(truth["missing_latent_frames"])))
                rewards, _ = expected_rewards(truth, rows)
                frame_sets[video_id] = (dict(zip(rows.tolist(), rewards)), features_frames(root, video_id), set(truth["missing_latent_frames"]))
            reward_of, frames, missing = frame_sets[video_id]
            np.testing.assert_allclose(window["reward"], [reward_of[int(f)] for f in frame_index], atol=1e-5)
            np.testing.assert_array_equal(window["movement"], [frames[int(f)]["movement_slice"] for f in frame_index])
            np.testing.assert_array_equal(window["ability_q"], [frames[int(f)]["ability_q"] for f in frame_index])
            windows_after_gap += int(frame_index[0]) - 1 in missing
    assert windows_after_gap > 0


def _write_video(root: Path, video_id: str, frame_indices, frames: list[dict] | None = None, latents=None, shape=(2, 2, 2)):
    frame_indices = np.asarray(frame_indices, np.int32)
    (root / "latents").mkdir(parents=True, exist_ok=True)
    (root / "features" / video_id).mkdir(parents=True, exist_ok=True)
    if latents is None:
        latents = np.zeros((len(frame_indices), *shape), np.float16)
    np.savez(root / "latents" / f"{video_id}.npz", latents=latents, frame_indices=frame_indices)
    if frames is None:
        frames = [{"frame_idx": i, "gold_gained": 0, "health_bar_x": 1, "health_bar_y": 1} for i in range(int(frame_indices.max()) + 1)]
    (root / "features" / video_id / "features.json").write_text(json.dumps({"video_id": video_id, "frames": frames}))


def _prepare(root: Path, tmp_path: Path, **kwargs):
    return prepare(root / "latents", root / "features", tmp_path / "out", progress=False, **kwargs)


def test_carried_events_keep_totals(tmp_path):
    """Drop latents on a death onset (a 3-frame gap), a gold frame (1 frame) and the video's tail:
    the events in the short gaps move to the next latent frame; the tail's events are dropped and
    reported, not piled onto the last latent frame (that was the old behaviour: -9.79 on frame
    3183). Kept + dropped reward = the truth's total."""
    source = fixtures_dir() / "lol_real"
    video_id = "NA1_5551816295_986"
    root = tmp_path / "in"
    (root / "features").mkdir(parents=True)
    (root / "latents").mkdir()
    shutil.copytree(source / "features" / video_id, root / "features" / video_id)
    with np.load(source / "latents" / f"{video_id}.npz") as npz:
        latents, frame_indices = npz["latents"], npz["frame_indices"]
    drop = np.isin(frame_indices, [201, 202, 203, 944]) | (frame_indices >= 3184)
    np.savez(root / "latents" / f"{video_id}.npz", latents=latents[~drop], frame_indices=frame_indices[~drop])
    report = _prepare(root, tmp_path, validation_fraction=0.0)
    dataset, _ = load_prepared(tmp_path / "out")
    kept = frame_indices[~drop]
    truth = load_truth(source, video_id)
    rewards, deaths = expected_rewards(truth, kept)
    np.testing.assert_allclose(dataset["train"]["reward"], rewards, atol=1e-5)
    assert kept[deaths].tolist() == [204, 1870]  # 201 -> 204; 3321 is after the last latent frame 3183
    assert dataset["train"]["reward"][-1] == 0 and not dataset["train"]["death"][-1]
    # gold 21 at 944 is carried to 945 (truth file: gold_events); gold 21 at 3184 and the death at 3321 are dropped
    assert report["carried"] == {"events": 2, "reward": pytest.approx(0.21 - 10), "deaths": 1}
    after = {"events": 2, "reward": pytest.approx(0.21 - 10), "deaths": 1}
    assert report["dropped"]["after"] == after and report["per_video"][video_id]["dropped"]["after"] == after
    assert report["dropped"]["events"] == 2 and report["dropped"]["before"]["events"] == report["dropped"]["long_gap"]["events"] == 0
    true_total = 0.01 * sum(truth["gold_events"].values()) - 30
    assert report["reward"]["total"] == pytest.approx(true_total - (0.21 - 10), abs=1e-3)
    assert report["reward"]["total"] + report["dropped"]["reward"] == pytest.approx(true_total, abs=1e-3)
    assert report["reward"]["labels_total"] == pytest.approx(true_total, abs=1e-3)
    # 816 of 4000 labelled frames after the latents: a warning (below the 0.5 error threshold).
    assert any(f"video '{video_id}'" in w and "truncated latent pack" in w and "816 labelled frames" in w for w in report["warnings"])


def test_health_bar_rule_one_event_per_death_and_no_flicker():
    visible = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0], bool)
    # flicker of 2 at frame 2 (< 3) is no death; the run of 5 from 6 is one death; the final
    # absence of 2 frames is cut by the end of the video.
    np.testing.assert_array_equal(np.flatnonzero(death_onsets_from_health_bar(visible, 3)), [6])
    np.testing.assert_array_equal(np.flatnonzero(death_onsets_from_health_bar(visible, 2)), [2, 6, 12])
    # Absent from the very first frame: nothing was seen dying.
    assert not death_onsets_from_health_bar(np.array([0, 0, 0, 0, 1], bool), 3).any()
    np.testing.assert_array_equal(np.flatnonzero(death_onsets_from_is_dead(np.array([1, 1, 0, 1, 1, 0, 1], bool))), [3, 6])


def test_death_rule_and_defaults_on_handmade_features(tmp_path):
    frames = [{"frame_idx": i, "health_bar_x": 5, "health_bar_y": 5} for i in range(12)]
    for i in (3, 6, 7, 8, 9):
        frames[i]["health_bar_x"] = frames[i]["health_bar_y"] = None
    frames[10] = {"frame_idx": 10}  # every key missing: bar state carried over, gold 0, actions default
    del frames[11]  # a latent frame without a features entry: has_action False
    frames.append({"frame_idx": 11, "gold_gained": 50, "ability_q": True, "movement_slice": 7, "health_bar_x": 5, "health_bar_y": 5})
    frames[11], frames[10] = frames[10], frames[11]  # features may be listed in any order
    del frames[2]
    _write_video(tmp_path / "in", "v", range(12), frames)
    report = _prepare(tmp_path / "in", tmp_path)
    dataset, _ = load_prepared(tmp_path / "out")
    train = dataset["train"]
    assert np.flatnonzero(train["death"]).tolist() == [6]
    np.testing.assert_allclose(train["reward"], [0] * 6 + [-10] + [0] * 4 + [0.5], atol=1e-6)
    assert np.flatnonzero(~np.array(train["has_action"])).tolist() == [2]
    assert train["movement"][11] == 7 and train["ability_q"][11] is True
    assert report["missing_keys"]["gold_gained"] == 10 and report["missing_keys"]["health_bar_x"] == 1
    assert report["frames"]["without_features"] == 1


def test_reward_spec_is_configurable(tmp_path):
    frames = [{"frame_idx": i, "gold_gained": 100 if i == 2 else 0, "is_dead": 5 <= i < 7} for i in range(10)]
    _write_video(tmp_path / "in", "v", range(10), frames)
    _prepare(tmp_path / "in", tmp_path, reward_spec=RewardSpec(gold_scale=0.1, death_penalty=-3.0))
    dataset, schema = load_prepared(tmp_path / "out")
    np.testing.assert_allclose(dataset["train"]["reward"], [0, 0, 10, 0, 0, -3, 0, 0, 0, 0])
    assert schema.reward_spec.gold_scale == 0.1


@pytest.mark.parametrize(
    "setup, message",
    [
        ("corrupt_npz", "cannot read packed latents"),
        ("corrupt_json", "not valid JSON"),
        ("shape_between_videos", "latent shape mismatch"),
        ("shape_declared", "latent shape mismatch"),
        ("unsorted", "frame_indices not sorted"),
        ("duplicate", "duplicate frame index 3"),
        ("nan", "NaN or inf on 1 frame(s), first at frame 4"),
        ("not_covered", "latents for 2 frame(s) the features do not cover"),
        ("missing_array", "missing array(s) ['frame_indices']"),
        ("bad_movement", "'movement_slice' must be an integer in 0..17"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, setup, message):
    root = tmp_path / "in"
    _write_video(root, "a", range(8))
    bad_file = root / "latents" / "b.npz"
    kwargs = {}
    if setup == "corrupt_npz":
        _write_video(root, "b", range(8))
        bad_file.write_bytes(b"not a zip file")
    elif setup == "corrupt_json":
        _write_video(root, "b", range(8))
        bad_file = root / "features" / "b" / "features.json"
        bad_file.write_text('{"frames": [')
    elif setup == "shape_between_videos":
        _write_video(root, "b", range(8), shape=(2, 2, 3))
    elif setup == "shape_declared":
        _write_video(root, "b", range(8))
        bad_file, kwargs = root / "latents" / "a.npz", {"latent_shape": (4, 4, 4)}
    elif setup == "unsorted":
        _write_video(root, "b", [0, 1, 3, 2])
    elif setup == "duplicate":
        _write_video(root, "b", [0, 1, 3, 3, 4], frames=[{"frame_idx": i} for i in range(5)])
    elif setup == "nan":
        latents = np.zeros((8, 2, 2, 2), np.float16)
        latents[4, 1, 0, 1] = np.nan
        _write_video(root, "b", range(8), latents=latents)
    elif setup == "not_covered":
        _write_video(root, "b", range(8), frames=[{"frame_idx": i} for i in range(6)])
    elif setup == "missing_array":
        _write_video(root, "b", range(8))
        np.savez(bad_file, latents=np.zeros((8, 2, 2, 2), np.float16))
    elif setup == "bad_movement":
        _write_video(root, "b", range(3), frames=[{"frame_idx": i, "movement_slice": 18 * (i == 1)} for i in range(3)])
        bad_file = root / "features" / "b" / "features.json"
    with pytest.raises(DataError) as error:
        _prepare(root, tmp_path, **kwargs)
    assert str(bad_file) in str(error.value) and message in str(error.value)


def test_missing_latents_file_is_named(tmp_path):
    with pytest.raises(DataError, match="latents file not found"):
        load_packed_latents(tmp_path / "nope.npz")


def test_unpaired_videos_are_reported_not_dropped_silently(tmp_path, capsys):
    root = tmp_path / "in"
    for video_id in ("a", "b", "c"):
        _write_video(root, video_id, range(6))
    (root / "latents" / "b.npz").unlink()
    shutil.rmtree(root / "features" / "c")
    code = main(["--latents-dir", str(root / "latents"), "--features-dir", str(root / "features"), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["videos_without_features"] == ["c"] and report["videos_without_latents"] == ["b"]
    assert "videos without features: ['c']" in capsys.readouterr().err


def test_cli_error_exit_and_overwrite(tmp_path, capsys):
    root = tmp_path / "in"
    _write_video(root, "a", range(6))
    args = ["--latents-dir", str(root / "latents"), "--features-dir", str(root / "features"), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 1
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_split_by_whole_videos_is_seeded():
    ids = [f"v{i}" for i in range(20)]
    splits = split_videos(ids, 0.1, seed=3)
    assert len(splits["validation"]) == 2 and sorted(splits["train"] + splits["validation"]) == sorted(ids)
    assert split_videos(ids, 0.1, seed=3) == splits and split_videos(ids, 0.1, seed=4) != splits
    assert len(split_videos(ids[:2], 0.1, seed=0)["validation"]) == 1
    assert split_videos(ids[:1], 0.1, seed=0)["validation"] == []


def test_recommended_twohot_range_covers_data():
    low, high = recommended_twohot_range(-10.0, 4.0)
    assert low < symlog(-10.0) < symlog(4.0) < high and high - low < 6
    low, high = recommended_twohot_range(0.0, 0.0)
    assert low < 0 < high


def test_custom_action_space_from_cli(tmp_path):
    frames = [{"frame_idx": i, "movement_slice": i, "ability_q": i == 2} for i in range(4)]
    _write_video(tmp_path / "in", "a", range(4), frames)
    space = '{"move": {"type": "categorical", "n": 4, "key": "movement_slice"}, "ability_q": {"type": "binary"}}'
    args = ["--latents-dir", str(tmp_path / "in" / "latents"), "--features-dir", str(tmp_path / "in" / "features"),
            "--output", str(tmp_path / "out"), "--action-space", space, "--no-progress"]
    assert main(args) == 0
    dataset, schema = load_prepared(tmp_path / "out")
    assert schema.action_space == {"move": {"type": "categorical", "n": 4}, "ability_q": {"type": "binary"}}
    assert dataset["train"]["move"] == [0, 1, 2, 3] and dataset["train"]["ability_q"] == [False, False, True, False]


def test_fixture_raises_no_warnings(prepared_fixture):
    """The real fixtures are complete: no missing key, no partial is_dead, nothing to warn about."""
    root, report, _, _ = prepared_fixture
    assert report["warnings"] == [] and report["missing_keys"] == {}
    expected_rule = "is_dead" if root.name == "lol_real_is_dead" else "health_bar"
    assert {stats["death_rule"] for stats in report["per_video"].values()} == {expected_rule}
    assert report["deaths"]["health_bar_fallback"] == {"videos": [], "frames": 0, "deaths": 0}
