"""Bounded carrying of rewards and deaths ("nothing lost, nothing invented", docs/data.md) and the
shard layout `data.prepare` writes.

Every expectation is computed by hand (in the comments) or frame by frame from the truth files
(`tests.data_helpers.event_fates`), never with `data.importers.carry_events` itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.importers import AFTER_LAST, BEFORE_FIRST, CARRIED, IN_LONG_GAP, ON_FRAME, DataError, carry_events
from data.prepare import main, prepare
from data.schema import load_prepared, symlog
from tests.data_helpers import event_fates, expected_drops, expected_rewards, fixtures_dir, load_truth

BINARY_KEYS = ("ability_q", "ability_w", "ability_e", "ability_r", "summoner_d", "summoner_f", "item_used", "recall_b")


def frame(i: int, **values) -> dict:
    """A complete features entry (every key the default action space and the reward read), alive."""
    return {"frame_idx": i, "gold_gained": 0, "health_bar_x": 10, "health_bar_y": 10, "movement_slice": 0,
            "is_dead": False, **{key: False for key in BINARY_KEYS}, **values}


def write_video(root: Path, video_id: str, frames: list[dict], latent_frames) -> None:
    latent_frames = np.asarray(latent_frames, np.int32)
    (root / "latents").mkdir(parents=True, exist_ok=True)
    (root / "features" / video_id).mkdir(parents=True, exist_ok=True)
    np.savez(root / "latents" / f"{video_id}.npz", latents=np.zeros((len(latent_frames), 2, 2, 2), np.float16),
             frame_indices=latent_frames)
    (root / "features" / video_id / "features.json").write_text(json.dumps({"video_id": video_id, "frames": frames}))


def run(root: Path, output: Path, **kwargs) -> dict:
    return prepare(root / "latents", root / "features", output, progress=False, validation_fraction=0.0, **kwargs)


def cli(root: Path, output: Path, *extra: str) -> int:
    return main(["--latents-dir", str(root / "latents"), "--features-dir", str(root / "features"),
                 "--output", str(output), "--no-progress", "--validation-fraction", "0", *extra])


def none(**_) -> dict:
    return {"events": 0, "reward": 0.0, "deaths": 0}


# --- the rule itself ------------------------------------------------------------------------------


def test_carry_events_rule_by_hand():
    """Latent frames 5 6 7 | 10 11 | 20 21: a 2-frame gap (8, 9) and an 8-frame gap (12..19)."""
    latent = np.array([5, 6, 7, 10, 11, 20, 21])
    frames = np.array([3, 6, 8, 9, 15, 25, 21])
    rewards = np.array([1.0, 2.0, 4.0, -10.0, 8.0, 16.0, 32.0])
    deaths = np.array([0, 0, 0, 1, 0, 1, 0])
    placed = carry_events(frames, rewards, deaths, latent, max_carry_frames=3)
    # 3: before frame 5; 6: on frame; 8 and 9: the gap of 2 -> frame 10; 15: inside the gap of 8;
    # 25: after frame 21; 21: on frame.
    assert placed.fate.tolist() == [BEFORE_FIRST, ON_FRAME, CARRIED, CARRIED, IN_LONG_GAP, AFTER_LAST, ON_FRAME]
    assert placed.row.tolist() == [-1, 1, 3, 3, -1, -1, 6]
    np.testing.assert_array_equal(placed.reward, [0, 2, 0, 4 - 10, 0, 0, 32])
    np.testing.assert_array_equal(placed.events, [0, 1, 0, 2, 0, 0, 1])
    np.testing.assert_array_equal(placed.deaths, [0, 0, 0, 1, 0, 0, 0])
    assert placed.report == {
        "on_frame": {"events": 2, "reward": 34.0, "deaths": 0},
        "carried": {"events": 2, "reward": -6.0, "deaths": 1},
        "dropped": {"events": 3, "reward": 25.0, "deaths": 1,
                    "before": {"events": 1, "reward": 1.0, "deaths": 0},
                    "after": {"events": 1, "reward": 16.0, "deaths": 1},
                    "long_gap": {"events": 1, "reward": 8.0, "deaths": 0}},
    }
    # 0: nothing crosses any gap; 8: the 8-frame gap is crossed too (15 -> frame 20); never the ends.
    assert carry_events(frames, rewards, deaths, latent, 0).fate.tolist()[2:5] == [IN_LONG_GAP] * 3
    wide = carry_events(frames, rewards, deaths, latent, 8)
    assert wide.row.tolist() == [-1, 1, 3, 3, 5, -1, 6] and wide.reward[5] == 8.0
    empty = carry_events(np.zeros(0, int), np.zeros(0), np.zeros(0, int), latent, 3)
    assert empty.reward.tolist() == [0] * 7 and empty.report["dropped"]["events"] == 0
    with pytest.raises(ValueError, match="strictly ascending"):
        carry_events(frames, rewards, deaths, np.array([5, 5, 6]), 3)


# --- a truncated latent pack ------------------------------------------------------------------------


def truncated_pack(root: Path) -> None:
    """Features for frames 0..1999, latents for 0..199 only. Gold 120 at frame 50 (covered); past
    frame 199: 36 gold events (210, 260, ..., 1960; 35 x 100 + 1 x 120 = 3,620 gold = +36.2) and 3
    deaths (is_dead from 505, 1005, 1505 for 20 frames; 3 x -10). The old importer put all 39 onto
    frame 199: +6.2 with death=True, and recommended a range without the penalty."""
    frames = [frame(i) for i in range(2000)]
    frames[50]["gold_gained"] = 120
    for k, i in enumerate(range(210, 2000, 50)):
        frames[i]["gold_gained"] = 120 if k == 0 else 100
    for start in (505, 1005, 1505):
        for i in range(start, start + 20):
            frames[i]["is_dead"] = True
    write_video(root, "trunc", frames, range(200))


def test_truncated_pack_is_an_error_naming_the_file(tmp_path, capsys):
    truncated_pack(tmp_path / "in")
    latents = tmp_path / "in" / "latents" / "trunc.npz"
    with pytest.raises(DataError) as error:
        run(tmp_path / "in", tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"{latents}: truncated latent pack? video 'trunc'")
    assert "2000 frames (0..1999)" in message and "200 frames (0..199)" in message
    assert "1800 labelled frames (90.0%)" in message and "--allow-truncated-latents" in message
    assert "39 reward/death event(s) there, reward 6.2, 3 death(s)" in message
    assert cli(tmp_path / "in", tmp_path / "out") == 1
    assert f"data.prepare: error: {latents}: truncated latent pack?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_truncated_pack_accepted_drops_and_reports(tmp_path, capsys):
    truncated_pack(tmp_path / "in")
    assert cli(tmp_path / "in", tmp_path / "out", "--allow-truncated-latents") == 0
    err = capsys.readouterr().err
    assert "warning: video 'trunc'" in err and "may be a truncated latent pack" in err
    assert "2000 frames (0..1999) but its latents 200 frames (0..199)" in err
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    dataset, schema = load_prepared(tmp_path / "out")
    train = dataset["train"]
    # Nothing piled onto the last latent frame: frame 199 has reward 0 and no death.
    assert train["frame_index"][-1] == 199 and train["reward"][-1] == 0 and train["death"][-1] is False
    assert np.flatnonzero(train["reward"]).tolist() == [50] and train["reward"][50] == pytest.approx(1.2)
    assert not any(train["death"])
    after = {"events": 39, "reward": pytest.approx(6.2), "deaths": 3}
    assert report["per_video"]["trunc"]["dropped"] == {"events": 39, "reward": pytest.approx(6.2), "deaths": 3,
                                                       "before": none(), "after": after, "long_gap": none()}
    assert report["dropped"]["after"] == after and report["dropped"]["videos"] == ["trunc"]
    assert report["dropped"]["events"] == 39 and report["dropped"]["deaths"] == 3
    assert report["per_video"]["trunc"]["coverage"] == {
        "label_frames": 2000, "label_range": [0, 1999], "latent_frames": 200, "latent_range": [0, 199],
        "labels_before_latents": 0, "labels_after_latents": 1800, "uncovered_fraction": 0.9, "truncated": True,
    }
    assert report["truncated_latents"] == {"videos": ["trunc"], "max_uncovered_fraction": 0.5, "allowed": True}
    # Kept + dropped = every reward of the labels: 1.2 + 36.2 - 30.
    assert report["reward"]["total"] == pytest.approx(1.2)
    assert report["reward"]["total"] + report["dropped"]["reward"] == pytest.approx(1.2 + 36.2 - 30)
    assert report["deaths"]["total"] == 3  # found in the labels; all three dropped
    # The rows hold no negative reward, yet the range covers the death penalty (and the gold events).
    assert report["reward"]["min"] == 0.0 and report["reward"]["negative_frames"] == 0
    assert report["reward"]["covered_min"] == -10.0 and schema.reward_min == -10.0
    low, high = schema.recommended_twohot_range
    assert low < symlog(-10.0) and high > symlog(1.2)
    assert report["recommended_twohot_range"] == [low, high]
    assert any("39 reward/death event(s) on frames without a latent were dropped" in w for w in report["warnings"])
    assert any("video 'trunc'" in w for w in report["warnings"])


def test_uncovered_fraction_threshold_is_an_option(tmp_path):
    """1,800 of 2,000 labelled frames uncovered (0.9): refused at 0.5 and 0.85, a warning at 0.95."""
    truncated_pack(tmp_path / "in")
    with pytest.raises(DataError, match="more than --max-uncovered-fraction 0.85"):
        run(tmp_path / "in", tmp_path / "out", max_uncovered_fraction=0.85)
    report = run(tmp_path / "in", tmp_path / "out", max_uncovered_fraction=0.95)
    assert report["dropped"]["after"]["events"] == 39 and report["truncated_latents"]["allowed"] is False
    assert any("may be a truncated latent pack" in w for w in report["warnings"])


def test_latents_starting_late_drop_the_events_before(tmp_path):
    """Features 0..299, latents 90..299; gold 50 at 0, 10, ..., 80 (9 events) and 70 at 90: frame
    90 keeps only its own 0.7 (the old importer put 9 x 0.5 more there); the 9 are reported."""
    frames = [frame(i, gold_gained=50 if i < 90 and i % 10 == 0 else 0) for i in range(300)]
    frames[90]["gold_gained"] = 70
    write_video(tmp_path / "in", "late", frames, range(90, 300))
    report = run(tmp_path / "in", tmp_path / "out")  # 90 / 300 = 30% uncovered: below 0.5, a warning
    train = load_prepared(tmp_path / "out")[0]["train"]
    assert train["frame_index"][0] == 90 and train["reward"][0] == pytest.approx(0.7)
    assert np.flatnonzero(train["reward"]).tolist() == [0]
    before = {"events": 9, "reward": pytest.approx(4.5), "deaths": 0}
    assert report["per_video"]["late"]["dropped"]["before"] == before and report["dropped"]["before"] == before
    assert report["dropped"]["after"] == none() and report["dropped"]["long_gap"] == none()
    assert report["per_video"]["late"]["coverage"]["labels_before_latents"] == 90
    assert any("video 'late'" in w and "(90 before, 0 after)" in w for w in report["warnings"])


def test_short_gap_carries_long_gap_drops(tmp_path, capsys):
    """Latents miss frames 20..22 (3) and 40..49 (10). Gold 50 at 21 and a death at 22 cross the
    short gap onto frame 23 (0.5 - 10 = -9.5, death); gold 70 at 45 is in the long gap: dropped."""
    frames = [frame(i) for i in range(60)]
    frames[21]["gold_gained"] = 50
    for i in range(22, 31):
        frames[i]["is_dead"] = True
    frames[45]["gold_gained"] = 70
    latent = [f for f in range(60) if not (20 <= f <= 22 or 40 <= f <= 49)]
    write_video(tmp_path / "in", "gaps", frames, latent)

    assert cli(tmp_path / "in", tmp_path / "out") == 0  # the default: 3
    train = load_prepared(tmp_path / "out")[0]["train"]
    frame_index = np.array(train["frame_index"])
    reward = dict(zip(frame_index.tolist(), train["reward"]))
    assert reward[23] == pytest.approx(-9.5) and train["death"][int(np.flatnonzero(frame_index == 23)[0])]
    assert reward[50] == 0 and sum(abs(r) for f, r in reward.items() if f != 23) == 0
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["max_carry_frames"] == 3
    assert report["carried"] == {"events": 2, "reward": pytest.approx(-9.5), "deaths": 1}
    assert report["dropped"]["long_gap"] == {"events": 1, "reward": pytest.approx(0.7), "deaths": 0}
    assert "1 inside gaps longer than --max-carry-frames 3" in capsys.readouterr().err

    # --max-carry-frames 10: the 10-frame gap is crossed too (45 -> 50); nothing dropped.
    assert cli(tmp_path / "in", tmp_path / "out10", "--max-carry-frames", "10") == 0
    report = json.loads((tmp_path / "out10" / "prepare_report.json").read_text())
    train = load_prepared(tmp_path / "out10")[0]["train"]
    assert dict(zip(train["frame_index"], train["reward"]))[50] == pytest.approx(0.7)
    assert report["carried"]["events"] == 3 and report["dropped"]["events"] == 0 and report["warnings"] == []

    # --max-carry-frames 2: the 3-frame gap is too long; the death is dropped, and the range still covers it.
    assert cli(tmp_path / "in", tmp_path / "out2", "--max-carry-frames", "2") == 0
    report = json.loads((tmp_path / "out2" / "prepare_report.json").read_text())
    assert report["dropped"]["long_gap"] == {"events": 3, "reward": pytest.approx(0.5 - 10 + 0.7), "deaths": 1}
    assert report["carried"]["events"] == 0 and report["reward"]["min"] == 0.0
    assert report["recommended_twohot_range"][0] < symlog(-10.0)


def test_twohot_range_covers_a_penalty_netted_with_gold(tmp_path):
    """Gold 500 and a death on frame 10: the row's reward is 5 - 10 = -5, the event's too; the range
    still covers the penalty -10 alone (a death without gold is a reward the data can hold)."""
    frames = [frame(i) for i in range(40)]
    frames[10]["gold_gained"] = 500
    for i in range(10, 20):
        frames[i]["is_dead"] = True
    write_video(tmp_path / "in", "net", frames, range(40))
    report = run(tmp_path / "in", tmp_path / "out")
    assert report["reward"]["min"] == pytest.approx(-5.0) and report["reward"]["covered_min"] == -10.0
    assert report["recommended_twohot_range"][0] < symlog(-10.0)
    assert report["dropped"]["events"] == 0 and report["warnings"] == []


def test_bad_carry_options(tmp_path, capsys):
    frames = [frame(i) for i in range(8)]
    write_video(tmp_path / "in", "a", frames, range(8))
    for extra, expected in ((["--max-carry-frames", "-1"], "--max-carry-frames must be >= 0"),
                            (["--max-uncovered-fraction", "1.5"], "--max-uncovered-fraction must be in [0, 1]"),
                            (["--max-uncovered-fraction", "nan"], "--max-uncovered-fraction must be in [0, 1]")):
        with pytest.raises(SystemExit) as exit_:
            cli(tmp_path / "in", tmp_path / "out", *extra)
        assert exit_.value.code == 2 and expected in capsys.readouterr().err
    with pytest.raises(DataError, match="--max-carry-frames must be an integer >= 0"):
        run(tmp_path / "in", tmp_path / "out", max_carry_frames=-2)


# --- the real fixtures --------------------------------------------------------------------------------


def _cut(frame_indices: np.ndarray, events: list[int]) -> np.ndarray:
    """Latent frames to keep: drop frames so that the true events meet every fate. The first event
    is left before the first latent frame, the last one after the last; the second sits in a new
    2-frame gap (carried), the third in an 11-frame gap (dropped)."""
    keep = np.ones(len(frame_indices), bool)
    keep &= frame_indices > events[0]
    keep &= frame_indices < events[-1]
    if len(events) >= 4:
        keep &= ~np.isin(frame_indices, [events[1], events[1] + 1])
        keep &= ~((frame_indices >= events[2] - 5) & (frame_indices <= events[2] + 5))
    return keep


@pytest.mark.parametrize("fixture", ["lol_real", "lol_real_is_dead"])
def test_real_fixture_events_are_kept_carried_or_reported(tmp_path, fixture):
    """Every true gold event and death of the truth files is on its frame, carried across a short
    gap, or reported dropped (before / after / long gap), and kept + dropped reward = the true total.
    The latents are cut so that each fate occurs; the expectations come from the truth files alone."""
    source = fixtures_dir() / fixture
    root = tmp_path / "in"
    (root / "latents").mkdir(parents=True)
    shutil.copytree(source / "features", root / "features")
    video_ids = sorted(p.stem for p in (source / "latents").glob("*.npz"))
    kept_frames = {}
    for video_id in video_ids:
        with np.load(source / "latents" / f"{video_id}.npz") as npz:
            latents, frame_indices = npz["latents"], npz["frame_indices"]
        truth = load_truth(source, video_id)
        events = sorted({int(f) for f in truth["gold_events"]} | set(truth["death_onsets"]))
        keep = _cut(frame_indices, events)
        np.savez(root / "latents" / f"{video_id}.npz", latents=latents[keep], frame_indices=frame_indices[keep])
        kept_frames[video_id] = frame_indices[keep]
    report = prepare(root / "latents", root / "features", tmp_path / "out", progress=False,
                     validation_fraction=0.0, allow_truncated_latents=True)
    train = load_prepared(tmp_path / "out")[0]["train"]
    video_column = np.array(train["video_id"])
    reward_column, death_column = np.array(train["reward"]), np.array(train["death"])

    fates_seen = set()
    for video_id in video_ids:
        truth = load_truth(source, video_id)
        frame_index = kept_frames[video_id]
        rows = video_column == video_id
        np.testing.assert_array_equal(np.array(train["frame_index"])[rows], frame_index)
        rewards, deaths = expected_rewards(truth, frame_index)
        np.testing.assert_allclose(reward_column[rows], rewards, atol=1e-5, err_msg=video_id)
        np.testing.assert_array_equal(death_column[rows], deaths, err_msg=video_id)

        expected = expected_drops(truth, frame_index)
        stats = report["per_video"][video_id]
        for kind in ("before", "after", "long_gap"):
            assert stats["dropped"][kind] == {**expected[kind], "reward": pytest.approx(expected[kind]["reward"], abs=1e-6)}, (video_id, kind)
        assert stats["carried_events"] == expected["carried"]["events"]
        assert stats["carried_deaths"] == expected["carried"]["deaths"]
        assert stats["carried_reward"] == pytest.approx(expected["carried"]["reward"], abs=1e-6)
        # Each true event has exactly one fate: the counts add up to the truth's events and deaths.
        fates = event_fates(truth, frame_index)
        assert sum(e["events"] for e in expected.values()) == len(fates)
        assert sum(e["deaths"] for e in expected.values()) == len(truth["death_onsets"]) == stats["deaths"]
        fates_seen |= {fate for fate, _ in fates.values()}
        # Kept (the rows) + dropped = the true total.
        true_total = 0.01 * sum(truth["gold_events"].values()) - 10 * len(truth["death_onsets"])
        assert float(reward_column[rows].sum(dtype=np.float64)) + stats["dropped"]["reward"] == pytest.approx(true_total, abs=1e-3)
    assert fates_seen == {"on_frame", "carried", "before", "after", "long_gap"}
    truths = [load_truth(source, video_id) for video_id in video_ids]
    true_total = sum(0.01 * sum(t["gold_events"].values()) - 10 * len(t["death_onsets"]) for t in truths)
    assert report["reward"]["total"] + report["dropped"]["reward"] == pytest.approx(true_total, abs=1e-3)
    assert report["reward"]["labels_total"] == pytest.approx(true_total, abs=1e-3)
    assert report["dropped"]["videos"] == video_ids


# --- the written layout -------------------------------------------------------------------------------


def test_written_folder_is_a_save_to_disk_layout(tmp_path, monkeypatch):
    """Rows go straight into the final shards: no `save_to_disk` copy, no read-back through
    `Dataset.from_file`. `datasets.load_from_disk` reads the folder; with a tiny shard size each
    video gets its own shard (named data-0000i-of-0000n.arrow), rows still in (video, frame) order."""
    import datasets

    import data.prepare

    def refuse(*args, **kwargs):
        raise AssertionError("data.prepare must not copy the rows")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", refuse)
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", refuse)
    monkeypatch.setattr(datasets.Dataset, "from_file", refuse)
    monkeypatch.setattr(data.prepare, "MAX_SHARD_BYTES", 1)
    for number, video_id in enumerate(("a", "b", "c")):
        frames = [frame(i, gold_gained=10 * number) for i in range(5 + number)]
        write_video(tmp_path / "in", video_id, frames, range(5 + number))
    run(tmp_path / "in", tmp_path / "out")
    train = tmp_path / "out" / "train"
    assert sorted(p.name for p in train.glob("*.arrow")) == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "out" / "validation").glob("*.arrow")) == ["data-00000-of-00001.arrow"]
    loaded = datasets.load_from_disk(str(tmp_path / "out"))
    assert list(loaded) == ["train", "validation"] and len(loaded["validation"]) == 0
    assert loaded["train"]["video_id"] == ["a"] * 5 + ["b"] * 6 + ["c"] * 7
    assert loaded["train"]["frame_index"] == [*range(5), *range(6), *range(7)]
    assert json.loads(loaded["train"].info.description)["latent_shape"] == [2, 2, 2]
    assert loaded["train"].split == "train" and loaded["train"].features["latents"].length == 8
