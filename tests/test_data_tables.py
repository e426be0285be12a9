"""Per-frame tables + event streams + a mapping file -> the prepared dataset (docs/data.md, "Per-frame tables and
event streams").

Two kinds of test. On real match records converted by the replay fixture tool (generated into tmp_path; skipped
when the fixtures are absent), every reward, death, cast, click cell, held movement and state value is compared
with the tool's truth file, worked out here frame by frame, never with the importer's own functions. On small
hand-made videos, every rule and every error path is checked by hand (the expected values are in the comments).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.mapping import load_mapping, parse_mapping
from data.prepare import main, prepare_tables
from data.schema import load_prepared
from data.timing import diagnose
from data.timing import main as timing_main
from modeling_dreamer.action_space import decode_value
from modeling_dreamer.errors import DataError
from tests.data_helpers import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
LOL_MAPPING = REPO / "recipes" / "lol_replay_mapping.yaml"
SLOTS = ("Q", "W", "E", "R", "Flash", "Ignite", "AA", "Recall", "Stride")
MAX_CARRY_FRAMES = 3  # the default of --max-carry-frames


# --- the replay fixture -------------------------------------------------------------------------------------


def replay_fixture(out: Path, count: int, lag: int = 1) -> tuple[Path, list[str]]:
    """Convert the first `count` real match records with the fixture tool (every other one truncated)."""
    root = fixtures_dir()
    tool = root.parent / "tools" / "make_replay_fixture.py"
    cache = root / "lol_state"
    if not tool.is_file() or not cache.is_dir():
        pytest.skip(f"replay fixture tool or match records not found ({tool}, {cache})")
    matches = sorted(p.stem for p in cache.glob("*.npz"))[:count]
    subprocess.run([sys.executable, str(tool), "--cache", str(cache), "--out", str(out), "--matches", *matches,
                    "--lag", str(lag)], check=True, capture_output=True)
    return out, matches


@pytest.fixture(scope="module")
def prepared_replay(tmp_path_factory):
    """Two matches (the second one's latents stop at 60% of its frames), prepared with the shipped mapping;
    the truncated one is the validation video, named in a file."""
    work = tmp_path_factory.mktemp("replay")
    root, matches = replay_fixture(work / "in", 2)
    (work / "validation.txt").write_text(f"# held out\n{matches[1]}\n")
    code = main(["--latents-dir", str(root / "latents"), "--tables-dir", str(root / "tables"),
                 "--events-dir", str(root / "events"), "--mapping", str(LOL_MAPPING), "--output", str(work / "out"),
                 "--validation-videos", f"@{work / 'validation.txt'}", "--tokenizer-name", "replay-synthetic",
                 "--tokenizer-hash", "0123abcd", "--no-progress"])
    assert code == 0
    dataset, schema = load_prepared(work / "out")
    report = json.loads((work / "out" / "prepare_report.json").read_text())
    truths = {m: json.loads((root / "truth" / f"{m}.json").read_text()) for m in matches}
    return root, matches, dataset, schema, report, truths


def rows_of(dataset, video_id: str) -> dict[str, np.ndarray]:
    for split in dataset.values():
        table = split.data
        ids = np.array(table.column("video_id").to_pylist())
        if (ids == video_id).any():
            rows = np.flatnonzero(ids == video_id)
            out = {name: table.column(name).to_numpy(zero_copy_only=False)[rows] for name in table.column_names
                   if name not in ("state", "state_mask")}
            for name in {"state", "state_mask"} & set(table.column_names):  # lists of S values per row
                values = table.column(name).to_pylist()
                out[name] = [values[r] for r in rows]
            return out
    raise AssertionError(f"video {video_id} not in the dataset")


def fate(frame: int, latent: list[int], position: dict[int, int]) -> tuple[str, int | None]:
    """Where an event on `frame` must go, from the carrying rule of docs/data.md."""
    if frame in position:
        return "on_frame", position[frame]
    if frame < latent[0]:
        return "before", None
    if frame > latent[-1]:
        return "after", None
    previous = max(f for f in latent if f < frame)
    following = min(f for f in latent if f > frame)
    return ("carried", position[following]) if following - previous - 1 <= MAX_CARRY_FRAMES else ("long_gap", None)


def expected_from_truth(truth: dict) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Per latent frame: the reward and death flag, and the rewards of each fate; every label event moved by
    the truth's lag (the mapping's offset) before carrying."""
    latent = truth["latent_frames"]
    position = {f: i for i, f in enumerate(latent)}
    reward, death = np.zeros(len(latent)), np.zeros(len(latent), bool)
    fates: dict[str, list[float]] = {}
    for frame, value in truth["rewards"].items():
        kind, row = fate(int(frame) + truth["lag"], latent, position)
        fates.setdefault(kind, []).append(value)
        if row is not None:
            reward[row] += value
    for frame in truth["death_onsets"]:
        kind, row = fate(frame + truth["lag"], latent, position)
        if row is not None:
            death[row] = True
    return reward, death, fates


def cell(x: float, y: float) -> int:
    """The class of a click in the mapping's 21 x 21 grid over [0, 1]^2, after the no-op class 0."""
    return 1 + min(int(y * 21), 20) * 21 + min(int(x * 21), 20)


def test_replay_rewards_and_deaths_equal_truth_after_the_offset(prepared_replay):
    root, matches, dataset, schema, report, truths = prepared_replay
    for video_id, truth in truths.items():
        rows = rows_of(dataset, video_id)
        assert rows["frame_index"].tolist() == truth["latent_frames"]
        reward, death, _ = expected_from_truth(truth)
        np.testing.assert_allclose(rows["reward"], reward, atol=1e-6, err_msg=video_id)
        np.testing.assert_array_equal(rows["death"], death, err_msg=video_id)
        assert rows["death"].sum() == len(truth["death_onsets"])  # every death is on a latent frame here
    # Each term's total: the death term is -0.2 per onset, the gold term the rest of the truth's rewards.
    onsets = sum(len(t["death_onsets"]) for t in truths.values())
    assert report["reward_terms"]["death"]["total"] == pytest.approx(-0.2 * onsets)
    assert report["reward_terms"]["death"]["deaths"] == report["deaths"]["total"] == onsets
    everything = sum(sum(t["rewards"].values()) for t in truths.values())
    assert report["reward_terms"]["gold"]["total"] == pytest.approx(everything + 0.2 * onsets)
    for term in report["reward_terms"].values():
        assert term["kept"]["reward"] + term["dropped"]["reward"] == pytest.approx(term["total"])
        assert term["offset"] == 1
    assert report["reward"]["labels_total"] == pytest.approx(everything)


def test_replay_gold_reward_by_hand_from_the_table(prepared_replay):
    """0.001 x every increase of gold_total, read from the table file itself: after a null reading the increase
    lands on the next frame with one. Equals the truth's rewards less the death penalties."""
    root, matches, dataset, schema, report, truths = prepared_replay
    for video_id, truth in truths.items():
        lines = (root / "tables" / f"{video_id}.jsonl").read_text().splitlines()
        gold, previous = {}, None
        for entry in map(json.loads, lines):
            if entry["gold_total"] is None:
                continue
            if previous is not None and entry["gold_total"] > previous:
                gold[entry["frame"]] = 0.001 * (entry["gold_total"] - previous)
            previous = entry["gold_total"]
        expected = {int(f): v for f, v in truth["rewards"].items()}
        for onset in truth["death_onsets"]:
            expected[onset] -= -0.2
        expected = {f: v for f, v in expected.items() if abs(v) > 1e-12}
        assert sorted(gold) == sorted(expected)
        np.testing.assert_allclose([gold[f] for f in sorted(gold)], [expected[f] for f in sorted(gold)], atol=1e-9)


def test_replay_nothing_is_carried_past_the_last_latent(prepared_replay):
    root, matches, dataset, schema, report, truths = prepared_replay
    truncated = truths[matches[1]]
    assert truncated["truncated"] and report["truncated_latents"]["videos"] == [matches[1]]
    _, _, fates = expected_from_truth(truncated)
    after = report["per_video"][matches[1]]["dropped"]["after"]
    assert after["events"] == len(fates["after"]) > 100
    assert after["reward"] == pytest.approx(sum(fates["after"]))
    # The last latent frame holds only its own reward, not the ones after it.
    rows = rows_of(dataset, matches[1])
    last = truncated["latent_frames"][-1]
    own = sum(v for f, v in truncated["rewards"].items() if int(f) + 1 == last)
    assert rows["reward"][-1] == pytest.approx(own, abs=1e-6)
    assert report["dropped"]["after"]["events"] == len(fates["after"]) + len(expected_from_truth(truths[matches[0]])[2].get("after", []))
    assert any(f"video '{matches[1]}'" in w and "may be a truncated latent pack" in w for w in report["warnings"])


def test_replay_casts_clicks_and_held_movement_are_exact(prepared_replay):
    root, matches, dataset, schema, report, truths = prepared_replay
    for video_id, truth in truths.items():
        rows = rows_of(dataset, video_id)
        frames = rows["frame_index"].tolist()
        latent = set(frames)
        for slot in SLOTS:
            pressed = {f for f, on in zip(frames, rows[slot]) if on}
            assert pressed == set(truth["casts"].get(slot, [])) & latent, f"{video_id} {slot}"
        clicks = {frame: cell(x, y) for frame, x, y in truth["clicks"]}
        assert rows["new_click"].tolist() == [f in clicks for f in frames]
        assert rows["click_cell"].tolist() == [clicks.get(f, 0) for f in frames]
        # The held cell: the last click at or before the frame (clicks on frames without a latent included).
        ordered = sorted(clicks)
        held = []
        for f in frames:
            earlier = [c for c in ordered if c <= f]
            held.append(clicks[earlier[-1]] if earlier else 0)
        assert rows["movement"].tolist() == held
        assert rows["has_action"].all()
    spec = schema.action_space["click_cell"]
    frame, x, y = truths[matches[0]]["clicks"][0]
    cx, cy = decode_value(spec, cell(x, y))
    assert abs(cx - x) <= 0.5 / 21 + 1e-9 and abs(cy - y) <= 0.5 / 21 + 1e-9


def test_replay_state_vector_and_schema(prepared_replay):
    root, matches, dataset, schema, report, truths = prepared_replay
    assert schema.state_names == ["hp_fraction", "level"]
    assert schema.tokenizer == {"name": "replay-synthetic", "hash": "0123abcd"}
    assert report["tokenizer"] == schema.tokenizer
    assert {name: spec["role"] for name, spec in schema.action_space.items()} == {
        **{slot: "both" for slot in SLOTS}, "movement": "input", "new_click": "target", "click_cell": "target"}
    grid = {"kind": "grid", "columns": 21, "rows": 21, "x": [0.0, 1.0], "y": [0.0, 1.0], "noop": True}
    assert schema.action_space["movement"] == {"type": "categorical", "n": 442, "role": "input", "meaning": grid,
                                               "held": {"flag": "new_click", "value": "click_cell"}}
    assert schema.action_space["click_cell"]["meaning"] == grid
    features = dataset["train"].features
    assert features["state"].length == 2 and features["state"].feature.dtype == "float32"
    assert features["state_mask"].feature.dtype == "bool"
    video_id = matches[0]
    table = {row["frame"]: row for row in map(json.loads, (root / "tables" / f"{video_id}.jsonl").read_text().splitlines())}
    rows = rows_of(dataset, video_id)
    for f, state, mask in zip(rows["frame_index"], rows["state"], rows["state_mask"]):
        row = table[int(f)]
        hp_known = row["hp"] is not None and row["hp_max"] not in (None, 0)
        assert mask == [hp_known, row["level"] is not None]
        expected = [row["hp"] / row["hp_max"] if hp_known else 0.0, row["level"] / 18 if row["level"] is not None else 0.0]
        np.testing.assert_allclose(state, expected, atol=1e-6)
    assert report["videos"]["validation"] == [matches[1]] and report["videos"]["validation_chosen_by"] == "name"


def test_replay_timing_diagnostic_finds_the_lag(prepared_replay, tmp_path, capsys):
    root, matches, dataset, schema, report, truths = prepared_replay
    timing = report["timing"]
    assert timing["offsets"] == [-3, -2, -1, 0, 1, 2, 3]
    for signal in ("rewards.gold", "rewards.death"):
        assert timing["best_offsets"][signal] == truths[matches[0]]["lag"] == 1
        entry = timing["signals"][signal]
        assert entry["mapping_offset"] == 1 and entry["best_score"] > 1.05
        assert entry["score"]["1"] == max(v for v in entry["score"].values() if v is not None)
    assert timing["signals"]["rewards.gold"]["best_z"] > 5 and timing["mismatches"] == []
    assert set(timing["signals"]) >= {f"actions.{slot}" for slot in SLOTS} | {"actions.new_click"}
    # The command gives the same result.
    assert timing_main(["--latents-dir", str(root / "latents"), "--tables-dir", str(root / "tables"),
                        "--events-dir", str(root / "events"), "--mapping", str(LOL_MAPPING),
                        "--output", str(tmp_path / "timing.json")]) == 0
    assert "rewards.gold" in capsys.readouterr().out
    assert json.loads((tmp_path / "timing.json").read_text())["best_offsets"] == timing["best_offsets"]


def test_timing_diagnostic_follows_the_lag(tmp_path):
    """Latents two frames late: the diagnostic says +2, and says the mapping's +1 is wrong."""
    root, _ = replay_fixture(tmp_path / "in", 1, lag=2)
    result = diagnose(root / "latents", root / "tables", LOL_MAPPING, root / "events")
    assert result["best_offsets"]["rewards.gold"] == 2 and result["best_offsets"]["rewards.death"] == 2
    assert any(m.startswith("rewards.gold: its events line up best with the latents at offset +2") for m in result["mismatches"])


# --- hand-made videos ---------------------------------------------------------------------------------------


def base_mapping(**sections) -> dict:
    """Frames t = 0.05 * frame; gold (cumulative) x 0.5; death: hp <= 0 for 2 frames, -10; a cast key, a held
    2 x 2 click grid (input) and a click flag (target); state hp / hp_max."""
    mapping = {
        "table": {"frame_column": "frame", "time_column": "t"},
        "events": {"time_field": "t", "tolerance": 0.04},
        "rewards": {
            "gold": {"kind": "increase", "column": "gold", "scale": 0.5},
            "death": {"kind": "death", "column": "hp", "dead_at_or_below": 0, "min_frames": 2, "penalty": -10},
        },
        "actions": {
            "q": {"kind": "binary", "match": {"type": "cast", "slot": "Q"}},
            "move": {"kind": "categorical", "role": "input", "match": {"type": "click"}, "hold": True,
                     "grid": {"x": "x", "y": "y", "columns": 2, "rows": 2}},
            "click": {"kind": "binary", "role": "target", "match": {"type": "click"}},
        },
        "state": {"hp": {"column": "hp", "divide_by": "hp_max"}},
    }
    mapping.update(sections)
    return mapping


def row(frame: int, **values) -> dict:
    return {"frame": frame, "t": round(0.05 * frame, 3), "gold": 100.0, "hp": 50.0, "hp_max": 100.0, **values}


def write_video(root: Path, video_id: str, rows: list[dict], events: list[dict] | None, latent_frames,
                fmt: str = "jsonl") -> None:
    """Latents (zeros, (2, 2, 2)) for `latent_frames`, the table in `fmt`, the events as JSON Lines."""
    for sub in ("latents", "tables", "events"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    latent_frames = np.asarray(latent_frames, np.int32)
    np.savez(root / "latents" / f"{video_id}.npz", latents=np.zeros((len(latent_frames), 2, 2, 2), np.float16),
             frame_indices=latent_frames)
    path = root / "tables" / f"{video_id}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa

        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        if fmt == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, path)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, path)
    if events is not None:
        (root / "events" / f"{video_id}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def write_mapping(root: Path, mapping: dict) -> Path:
    path = root / "mapping.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def run(root: Path, mapping: dict | Path, output: Path | None = None, **kwargs) -> dict:
    path = mapping if isinstance(mapping, Path) else write_mapping(root, mapping)
    return prepare_tables(root / "latents", root / "tables", output or root / "out", path, events_dir=root / "events",
                          progress=False, validation_fraction=0.0, **kwargs)


def cli(root: Path, *extra: str, mapping: dict | None = None) -> int:
    path = write_mapping(root, mapping or base_mapping())
    return main(["--latents-dir", str(root / "latents"), "--tables-dir", str(root / "tables"), "--events-dir",
                 str(root / "events"), "--mapping", str(path), "--output", str(root / "out"), "--no-progress",
                 "--validation-fraction", "0", *extra])


def loaded(root: Path, output: Path | None = None) -> dict[str, np.ndarray]:
    dataset, _ = load_prepared(output or root / "out")
    return rows_of(dataset, dataset["train"]["video_id"][0])


def small_video(root: Path, fmt: str = "jsonl", video_id: str = "a") -> None:
    """Frames 0..9, all with latents. Gold 100 -> 104 at frame 2 (+2 reward), -> 110 at frame 6 (+3); hp 0 on
    frames 4-5 (a death at 4); Q at t 0.15 (frame 3); clicks at t 0.05 (frame 1, cell (0, 0) = 1) and t 0.35
    (frame 7, x 0.9, y 0.8: cell (1, 1) = 4)."""
    rows = [row(i) for i in range(10)]
    for i in range(2, 10):
        rows[i]["gold"] = 104.0 if i < 6 else 110.0
    rows[4]["hp"] = rows[5]["hp"] = 0.0
    events = [{"t": 0.05, "type": "click", "x": 0.1, "y": 0.2}, {"t": 0.15, "type": "cast", "slot": "Q"},
              {"t": 0.35, "type": "click", "x": 0.9, "y": 0.8}]
    write_video(root, video_id, rows, events, range(10), fmt)


def test_small_video_by_hand(tmp_path):
    small_video(tmp_path)
    report = run(tmp_path, base_mapping())
    rows = loaded(tmp_path)
    assert rows["reward"].tolist() == [0, 0, 2, 0, -10, 0, 3, 0, 0, 0]
    assert rows["death"].tolist() == [False] * 4 + [True] + [False] * 5
    assert rows["q"].tolist() == [i == 3 for i in range(10)]
    assert rows["click"].tolist() == [i in (1, 7) for i in range(10)]
    assert rows["move"].tolist() == [0, 1, 1, 1, 1, 1, 1, 4, 4, 4]
    assert [s[0] for s in rows["state"]] == pytest.approx([0.5] * 4 + [0.0, 0.0] + [0.5] * 4)
    assert report["reward_terms"]["gold"]["total"] == 5.0 and report["reward_terms"]["death"]["total"] == -10.0
    assert report["actions"]["move"]["events"] == 2 and report["actions"]["q"]["nonzero_frames"] == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_in_each_format_gives_the_same_dataset(tmp_path, fmt):
    small_video(tmp_path / "jsonl", "jsonl")
    small_video(tmp_path / fmt, fmt)
    run(tmp_path / "jsonl", base_mapping())
    run(tmp_path / fmt, base_mapping())
    expected, got = loaded(tmp_path / "jsonl"), loaded(tmp_path / fmt)
    for name in ("reward", "death", "q", "move", "click", "has_action", "frame_index"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["state"] == expected["state"]


def test_several_tables_for_one_video_are_refused(tmp_path):
    small_video(tmp_path, "jsonl")
    small_video(tmp_path, "csv")
    with pytest.raises(DataError, match=r"video 'a' has several tables \(a.jsonl, a.csv\)"):
        run(tmp_path, base_mapping())


def test_null_readings_are_unknown_never_zero(tmp_path):
    """Gold unread on frames 2-3 (it rose from 100 to 104 meanwhile): +2 on frame 4, the next reading.
    hp unread on frames 6-7 between readings of 0: alive there, so frames 5 and 8 are no death (one dead frame
    each, min_frames 2). A null state reading is masked; a null action column makes the frame's action unknown."""
    rows = [row(i, shop=False) for i in range(10)]
    rows[2]["gold"] = rows[3]["gold"] = None
    for i in range(4, 10):
        rows[i]["gold"] = 104.0
    rows[5]["hp"] = rows[8]["hp"] = 0.0
    rows[6]["hp"] = rows[7]["hp"] = None
    rows[9]["hp_max"] = None
    rows[3]["shop"] = None
    write_video(tmp_path, "a", rows, [], range(10))
    mapping = base_mapping()
    mapping["actions"]["shop"] = {"kind": "binary", "column": "shop"}
    report = run(tmp_path, mapping)
    got = loaded(tmp_path)
    assert got["reward"].tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0, 0]
    assert not got["death"].any() and report["deaths"]["total"] == 0
    assert [m[0] for m in got["state_mask"]] == [True] * 6 + [False, False, True, False]
    assert [s[0] for s in got["state"]][6:8] == [0.0, 0.0]
    assert got["has_action"].tolist() == [i != 3 for i in range(10)]
    assert report["null_readings"] == {"gold": 2, "hp": 2, "hp_max": 1, "shop": 1, "t": 0}
    assert report["frames"]["without_action"] == 1


def test_offsets_move_signals_and_one_past_the_last_latent_is_dropped(tmp_path):
    """Offset +1 on every reward and on q. Gold +2 at label frame 2 -> frame 3; the death at 4 -> 5; gold +3 at
    label frame 9 -> frame 10: past the last latent frame 9, dropped (after) and reported, never put on 9. The Q
    press at label frame 9 moves to frame 10 too: lost, counted."""
    rows = [row(i) for i in range(10)]
    for i in range(2, 10):
        rows[i]["gold"] = 104.0 if i < 9 else 110.0
    rows[4]["hp"] = rows[5]["hp"] = 0.0
    write_video(tmp_path, "a", rows, [{"t": 0.45, "type": "cast", "slot": "Q"}, {"t": 0.15, "type": "cast", "slot": "Q"}],
                range(10))
    mapping = base_mapping()
    for term in mapping["rewards"].values():
        term["offset"] = 1
    mapping["actions"]["q"]["offset"] = 1
    report = run(tmp_path, mapping)
    got = loaded(tmp_path)
    assert got["reward"].tolist() == [0, 0, 0, 2, 0, -10, 0, 0, 0, 0]
    assert got["death"].tolist() == [i == 5 for i in range(10)]
    assert got["q"].tolist() == [i == 4 for i in range(10)]
    gold = report["reward_terms"]["gold"]
    assert gold["dropped"]["after"] == {"events": 1, "reward": 3.0} and gold["kept"] == {"events": 1, "reward": 2.0}
    assert report["dropped"]["after"] == {"events": 1, "reward": 3.0, "deaths": 0}
    assert report["actions"]["q"]["lost_without_latent"] == 1 and report["actions"]["q"]["on_latent_frames"] == 1
    assert any("1 reward/death event(s) on frames without a latent were dropped" in w for w in report["warnings"])


def test_carrying_across_short_and_long_gaps(tmp_path):
    """Latents 0-3, 6-9 (a gap of 2), 20-29 (a gap of 10). Gold rises at label frames 4 (+1) and 12 (+2): the
    first is carried to frame 6, the second dropped in the long gap."""
    rows = [row(i) for i in range(30)]
    for i in range(4, 30):
        rows[i]["gold"] = 102.0 if i < 12 else 106.0
    write_video(tmp_path, "a", rows, [], [*range(4), *range(6, 10), *range(20, 30)])
    report = run(tmp_path, base_mapping())
    got = loaded(tmp_path)
    assert got["frame_index"][np.flatnonzero(got["reward"])].tolist() == [6] and got["reward"].sum() == 1.0
    assert report["carried"] == {"events": 1, "reward": 1.0, "deaths": 0}
    assert report["dropped"]["long_gap"] == {"events": 1, "reward": 2.0, "deaths": 0}


def test_events_outside_the_video_are_counted(tmp_path):
    """Frames 0..9 (t 0..0.45), then a gap in the times: frame 10 at t 1.0. Events at t -0.5 (before), 0.7 (in
    the gap: the next frame is 0.3 s later, beyond the 0.04 tolerance), 5.0 (after) and 0.22 (frame 5, 0.03 s
    later: within it)."""
    rows = [row(i) for i in range(10)] + [row(10, t=1.0)]
    events = [{"t": -0.5, "type": "cast", "slot": "Q"}, {"t": 0.7, "type": "cast", "slot": "Q"},
              {"t": 5.0, "type": "click", "x": 0.5, "y": 0.5}, {"t": 0.22, "type": "cast", "slot": "Q"}]
    write_video(tmp_path, "a", rows, events, range(11))
    report = run(tmp_path, base_mapping())
    got = loaded(tmp_path)
    assert got["q"].tolist() == [i == 5 for i in range(11)] and not got["click"].any()
    assert report["events"] == {"read": 4, "mapped": 1,
                                "outside_video": {"before_video": 1, "after_video": 1, "unmatched": 1}}
    assert report["actions"]["q"]["outside_video"] == {"before_video": 1, "after_video": 0, "unmatched": 1}
    assert report["actions"]["click"]["outside_video"]["after_video"] == 1
    assert any("3 event(s) lie outside their video's table" in w for w in report["warnings"])


def test_event_frames_by_fps_and_by_frame_field(tmp_path):
    """Without a time column: fps 20 from start_time 1.0 (t 1.15 -> frame 3; t 1.151 -> frame 4), or an event's
    own frame field (frame 7)."""
    rows = [{"frame": i, "gold": 100.0, "hp": 50.0, "hp_max": 100.0} for i in range(10)]
    events = [{"t": 1.15, "type": "cast", "slot": "Q"}, {"t": 1.151, "type": "cast", "slot": "Q"},
              {"f": 7, "type": "cast", "slot": "Q"}]
    write_video(tmp_path, "a", rows, events, range(10))
    mapping = base_mapping(table={"frame_column": "frame"},
                           events={"time_field": "t", "frame_field": "f", "fps": 20, "start_time": 1.0})
    run(tmp_path, mapping)
    assert np.flatnonzero(loaded(tmp_path)["q"]).tolist() == [3, 4, 7]


def test_reward_options_threshold_event_values_and_death_flicker(tmp_path):
    """min_increase 3: +1 (frame 2) is dropped, +4 (frame 5) counts (x 0.5 = 2). An event term with a value field:
    2 x 7 at frame 6. hp 0 on frame 3 alone (flicker, shorter than min_frames 2) and on frames 8-9 (2 frames, the
    last two of the video: enough) -> one death, at 8."""
    rows = [row(i) for i in range(10)]
    for i in range(2, 10):
        rows[i]["gold"] = 101.0 if i < 5 else 105.0
    rows[3]["hp"] = rows[8]["hp"] = rows[9]["hp"] = 0.0
    write_video(tmp_path, "a", rows, [{"t": 0.3, "type": "kill", "bounty": 7}], range(10))
    mapping = base_mapping()
    mapping["rewards"]["gold"]["min_increase"] = 3
    mapping["rewards"]["kill"] = {"kind": "event", "match": {"type": "kill"}, "value": 2, "value_field": "bounty"}
    report = run(tmp_path, mapping)
    assert loaded(tmp_path)["reward"].tolist() == [0, 0, 0, 0, 0, 2, 14, 0, -10, 0]
    assert report["reward_terms"]["kill"]["total"] == 14 and report["deaths"]["total"] == 1


def test_categorical_columns_fields_and_clipped_grid(tmp_path):
    """An integer column (n 3), an event field held until the next event, a binary boolean column, and a grid
    click outside [0, 1] clipped into the border cell (counted)."""
    rows = [row(i, mode=i % 3, shop=i >= 5) for i in range(6)]
    events = [{"t": 0.05, "type": "item", "slot": 2}, {"t": 0.2, "type": "item", "slot": 1},
              {"t": 0.1, "type": "click", "x": 1.5, "y": -0.2}]
    write_video(tmp_path, "a", rows, events, range(6))
    mapping = base_mapping()
    mapping["actions"].update({
        "mode": {"kind": "categorical", "column": "mode", "n": 3},
        "item": {"kind": "categorical", "match": {"type": "item"}, "field": "slot", "n": 3, "hold": True},
        "shop": {"kind": "binary", "column": "shop"},
    })
    report = run(tmp_path, mapping)
    got = loaded(tmp_path)
    assert got["mode"].tolist() == [0, 1, 2, 0, 1, 2]
    assert got["item"].tolist() == [0, 2, 2, 2, 1, 1]
    assert got["shop"].tolist() == [False] * 5 + [True]
    assert got["move"].tolist() == [0, 0, 2, 2, 2, 2]  # x clipped to column 1, y to row 0: class 1 + 0 * 2 + 1
    assert report["actions"]["move"]["clipped"] == 1


def test_truncated_pack_is_an_error_or_a_warning(tmp_path):
    rows = [row(i) for i in range(100)]
    for i in range(50, 100):
        rows[i]["gold"] = 120.0
    write_video(tmp_path, "a", rows, [], range(30))
    latents = tmp_path / "latents" / "a.npz"
    with pytest.raises(DataError) as error:
        run(tmp_path, base_mapping())
    message = str(error.value)
    assert message.startswith(f"{latents}: truncated latent pack? video 'a'")
    assert "100 frames (0..99)" in message and "30 frames (0..29)" in message
    report = run(tmp_path, base_mapping(), allow_truncated_latents=True)
    assert report["dropped"]["after"] == {"events": 1, "reward": 10.0, "deaths": 0}
    assert report["truncated_latents"]["videos"] == ["a"]


def test_validation_videos_by_name(tmp_path, capsys):
    for video_id in ("a", "b", "c"):
        small_video(tmp_path, video_id=video_id)
    report = run(tmp_path, base_mapping(), validation_videos=["b"])
    assert report["videos"]["train"] == ["a", "c"] and report["videos"]["validation"] == ["b"]
    (tmp_path / "ids.txt").write_text("c\n\n# a comment\na\n")
    code = main(["--latents-dir", str(tmp_path / "latents"), "--tables-dir", str(tmp_path / "tables"), "--events-dir",
                 str(tmp_path / "events"), "--mapping", str(tmp_path / "mapping.yaml"), "--output", str(tmp_path / "out2"),
                 "--no-progress", "--validation-videos", f"@{tmp_path / 'ids.txt'}"])
    assert code == 0
    assert json.loads((tmp_path / "out2" / "prepare_report.json").read_text())["videos"]["validation"] == ["a", "c"]
    (tmp_path / "latents" / "d.npz").write_bytes((tmp_path / "latents" / "a.npz").read_bytes())
    with pytest.raises(DataError, match=r"--validation-videos: unknown video id\(s\) \['d', 'zzz'\] .*'d' has latents but no table"):
        run(tmp_path, base_mapping(), tmp_path / "out3", validation_videos=["d", "zzz", "a"])
    with pytest.raises(DataError, match="none is left for training"):
        run(tmp_path, base_mapping(), tmp_path / "out3", validation_videos=["a", "b", "c"])


def test_command_line_pairs_and_flags(tmp_path, capsys):
    small_video(tmp_path)
    for extra, expected in (
        (["--gold-scale", "0.1"], "--gold-scale apply to --features-dir only"),
        (["--tokenizer-name", "x"], "--tokenizer-name and --tokenizer-hash go together"),
        (["--timing-offsets", "2", "-2"], "--timing-offsets LOW HIGH needs LOW <= HIGH"),
        (["--validation-videos", "a", "--validation-fraction", "0.5"], "not both"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--latents-dir", str(tmp_path / "latents"), "--tables-dir", str(tmp_path / "tables"), "--mapping",
                  str(write_mapping(tmp_path, base_mapping())), "--output", str(tmp_path / "out"), *extra])
        assert exit_.value.code == 2 and expected in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--latents-dir", str(tmp_path / "latents"), "--tables-dir", str(tmp_path / "tables"), "--output", "x"])
    assert "--tables-dir needs --mapping" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--latents-dir", str(tmp_path / "latents"), "--output", "x"])
    assert "give exactly one of --features-dir" in capsys.readouterr().err
    assert cli(tmp_path, "--tokenizer-name", "tok", "--tokenizer-hash", "h1", "--timing-offsets", "-1", "1") == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "rewards.gold" in out
    _, schema = load_prepared(tmp_path / "out")
    assert schema.tokenizer == {"name": "tok", "hash": "h1"}
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["timing"]["offsets"] == [-1, 0, 1]


# --- error paths --------------------------------------------------------------------------------------------


def test_missing_table_skips_the_video_and_no_table_at_all_is_an_error(tmp_path):
    small_video(tmp_path)
    (tmp_path / "latents" / "b.npz").write_bytes((tmp_path / "latents" / "a.npz").read_bytes())
    report = run(tmp_path, base_mapping())
    assert report["videos_without_table"] == ["b"] and report["videos"]["train"] == ["a"]
    assert "1 videos without a table: ['b']" in report["warnings"]
    (tmp_path / "tables" / "a.jsonl").unlink()
    with pytest.raises(DataError, match=r"no video has both <id>.npz here and a table"):
        run(tmp_path, base_mapping(), tmp_path / "out2")
    with pytest.raises(DataError, match="tables directory not found"):
        prepare_tables(tmp_path / "latents", tmp_path / "nowhere", tmp_path / "out3", write_mapping(tmp_path, base_mapping()),
                       events_dir=tmp_path / "events")


def test_missing_events_file_or_folder(tmp_path):
    small_video(tmp_path)
    (tmp_path / "events" / "a.jsonl").unlink()
    with pytest.raises(DataError, match=r"a.jsonl: events file not found \(the mapping .* reads events; write an empty"):
        run(tmp_path, base_mapping())
    path = write_mapping(tmp_path, base_mapping())
    with pytest.raises(DataError, match=r"actions\.q reads events: give --events-dir"):
        prepare_tables(tmp_path / "latents", tmp_path / "tables", tmp_path / "out", path, progress=False)


@pytest.mark.parametrize("change, key, problem", [
    (lambda m: m.update(reward={}), "reward", "unknown key"),
    (lambda m: m["rewards"]["gold"].update(scal=1), "rewards.gold.scal", "unknown key"),
    (lambda m: m["rewards"]["gold"].pop("scale"), "rewards.gold.scale", "required key is missing"),
    (lambda m: m["rewards"]["gold"].update(scale="a"), "rewards.gold.scale", "must be a finite number"),
    (lambda m: m["rewards"]["gold"].update(kind="more"), "rewards.gold.kind", "must be one of"),
    (lambda m: m["rewards"]["gold"].update(offset=0.5), "rewards.gold.offset", "must be an integer"),
    (lambda m: m["actions"]["q"].update(role="policy"), "actions.q.role", "must be one of ['both', 'input', 'target']"),
    (lambda m: m["actions"]["q"].update(column="q"), "actions.q", "exactly one of 'match' (events) or 'column'"),
    (lambda m: m["actions"]["q"].update(hold=True), "actions.q.hold", "hold applies to categorical"),
    (lambda m: m["actions"]["move"]["grid"].update(noop=False), "actions.move.grid.noop", "needs noop: true"),
    (lambda m: m["actions"]["move"]["grid"].update(x_range=[1, 0]), "actions.move.grid.x_range", "low must be < high"),
    (lambda m: m["actions"]["move"].pop("grid"), "actions.move.n", "required"),
    (lambda m: m["actions"].update(reward={"kind": "binary", "column": "r"}), "actions.reward", "column of the dataset"),
    (lambda m: m["events"].pop("tolerance"), "events.tolerance", "required with table.time_column"),
    (lambda m: m.pop("events"), "events", "reads events"),
    (lambda m: m["state"]["hp"].pop("column"), "state.hp.column", "required key is missing"),
    (lambda m: m.pop("table"), "table", "required key is missing"),
    (lambda m: m.update(actions={"m": {"kind": "binary", "role": "input", "column": "x"}}), "actions",
     "no component is a policy target"),
])
def test_bad_mapping_keys_are_named(tmp_path, change, key, problem):
    mapping = base_mapping()
    change(mapping)
    path = write_mapping(tmp_path, mapping)
    with pytest.raises(DataError) as error:
        load_mapping(path)
    assert str(error.value).startswith(f"{path}: {key}: ") and problem in str(error.value)


def test_mapping_file_not_found_or_not_yaml(tmp_path):
    with pytest.raises(DataError, match="mapping file not found"):
        load_mapping(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("table: [unclosed")
    with pytest.raises(DataError, match="bad.yaml: not a valid YAML mapping file"):
        load_mapping(tmp_path / "bad.yaml")


def test_shipped_mapping_declares_the_lol_signals():
    mapping = load_mapping(LOL_MAPPING)
    assert list(mapping.actions) == [*SLOTS, "movement", "new_click", "click_cell"]
    assert {t.name: (t.kind, t.offset) for t in mapping.rewards.values()} == {"gold": ("increase", 1), "death": ("death", 1)}
    assert mapping.rewards["gold"].scale == 0.001 and mapping.rewards["death"].penalty == -0.2
    assert mapping.state_names == ["hp_fraction", "level"]
    assert parse_mapping(json.loads(json.dumps(yaml.safe_load(LOL_MAPPING.read_text())))).action_space() == mapping.action_space()


def test_unknown_column_names_table_column_and_key(tmp_path):
    small_video(tmp_path)
    mapping = base_mapping()
    mapping["rewards"]["gold"]["column"] = "gold_total"
    with pytest.raises(DataError) as error:
        run(tmp_path, mapping)
    assert str(error.value).startswith(f"{tmp_path / 'tables' / 'a.jsonl'}: column 'gold_total' not found (read by "
                                       f"{tmp_path / 'mapping.yaml'}: rewards.gold.column)")


def test_event_without_time_names_file_and_line(tmp_path):
    small_video(tmp_path)
    path = tmp_path / "events" / "a.jsonl"
    path.write_text(path.read_text() + json.dumps({"type": "cast", "slot": "W"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}: line 4: event without time: it has no 't' \(time\)"):
        run(tmp_path, base_mapping())
    path.write_text(json.dumps({"t": "soon", "type": "cast"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}: line 1: event field 't' .* must be a finite number, got 'soon'"):
        run(tmp_path, base_mapping())
    path.write_text(json.dumps({"t": 0.1, "type": "click", "x": None, "y": 0.5}) + "\n")
    with pytest.raises(DataError, match=rf"{path}: line 1: event field 'x' .*actions.move.grid.x\) must be a finite number"):
        run(tmp_path, base_mapping())
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=rf"{path}: line 1: expected a JSON object"):
        run(tmp_path, base_mapping())


@pytest.mark.parametrize("frames, problem", [
    ([0, 1, 3, 2, 4], r"frame 2 \(row 3\) comes after frame 3 \(row 2\); rows must be sorted by frame number"),
    ([0, 1, 1, 2, 3], r"frame 1 \(row 2\) repeats frame 1 \(row 1\)"),
    ([0, 1, 2.5, 3, 4], r"row 2 \(line 3\): frame column 'frame' .* must be an integer in 0..2147483647, got 2.5"),
    ([0, 1, None, 3, 4], r"row 2 \(line 3\): frame column 'frame'"),
])
def test_unsorted_or_bad_table_frames(tmp_path, frames, problem):
    write_video(tmp_path, "a", [row(0) | {"frame": f} for f in frames], [], range(2))
    with pytest.raises(DataError, match=rf"{tmp_path / 'tables' / 'a.jsonl'}: .*{problem}"):
        run(tmp_path, base_mapping())


def test_bad_values_name_frame_column_and_key(tmp_path):
    rows = [row(i) for i in range(4)]
    rows[2]["gold"] = "lots"
    write_video(tmp_path, "a", rows, [], range(4))
    with pytest.raises(DataError, match=r"a.jsonl: frame 2: column 'gold' \(.*mapping.yaml: rewards.gold.column\) must be a finite number"):
        run(tmp_path, base_mapping())
    rows[2]["gold"], rows[1]["shop"] = 100.0, "false"
    write_video(tmp_path, "a", rows, [], range(4))
    mapping = base_mapping()
    mapping["actions"]["shop"] = {"kind": "binary", "column": "shop"}
    with pytest.raises(DataError, match=r"frame 1: column 'shop' .* must be true/false \(or 0/1\) or null, got 'false'"):
        run(tmp_path, mapping)
    rows[1]["t"], rows[1]["shop"] = 0.5, True
    write_video(tmp_path, "a", rows, [], range(4))
    with pytest.raises(DataError, match=r"time column 't' .* goes back in time: 0.1 at frame 2 after 0.5 at frame 1"):
        run(tmp_path, base_mapping())


def test_absurd_frame_number_is_refused_before_any_allocation(tmp_path):
    write_video(tmp_path, "a", [row(0), row(1), row(2**31 - 1)], [], range(2))
    with pytest.raises(DataError, match=r"a.jsonl: frame 2147483647 is 2147483646 frames after .* raise --max-frame-gap"):
        run(tmp_path, base_mapping())


def test_latents_beyond_the_table_are_refused(tmp_path):
    write_video(tmp_path, "a", [row(i) for i in range(5)], [], range(7))
    with pytest.raises(DataError, match=r"a.npz: latents for 2 frame\(s\) the table does not cover \(frames 5..6"):
        run(tmp_path, base_mapping())


def test_features_path_takes_validation_videos_and_tokenizer(tmp_path):
    """The flags apply to the features.json path too; a schema written before them still reads."""
    from data.prepare import prepare
    from data.schema import DatasetSchema

    for video_id in ("x", "y"):
        (tmp_path / "features" / video_id).mkdir(parents=True)
        frames = [{"frame_idx": i, "gold_gained": 10 * (i == 2), "health_bar_x": 1, "health_bar_y": 1, "movement_slice": 0}
                  for i in range(4)]
        (tmp_path / "features" / video_id / "features.json").write_text(json.dumps({"frames": frames}))
        (tmp_path / "latents").mkdir(exist_ok=True)
        np.savez(tmp_path / "latents" / f"{video_id}.npz", latents=np.zeros((4, 2, 2, 2), np.float16),
                 frame_indices=np.arange(4, dtype=np.int32))
    report = prepare(tmp_path / "latents", tmp_path / "features", tmp_path / "out", progress=False,
                     validation_videos=["y"], tokenizer={"name": "tok", "hash": "h"})
    _, schema = load_prepared(tmp_path / "out")
    assert report["videos"]["validation"] == ["y"] and schema.tokenizer == {"name": "tok", "hash": "h"}
    assert schema.state_names == [] and schema.label_mapping is None
    with pytest.raises(DataError, match=r"unknown video id\(s\) \['q'\]"):
        prepare(tmp_path / "latents", tmp_path / "features", tmp_path / "out2", progress=False, validation_videos=["q"])
    with pytest.raises(DataError, match="tokenizer identity must be"):
        prepare(tmp_path / "latents", tmp_path / "features", tmp_path / "out2", progress=False, tokenizer={"name": "t"})
    old = json.loads((tmp_path / "out" / "dreamer_schema.json").read_text())
    for key in ("state_names", "tokenizer", "label_mapping"):
        old.pop(key)
    old["schema_version"] = 1
    assert DatasetSchema.from_json(json.dumps(old)).reward_spec == schema.reward_spec


def test_replay_recipes_parse_and_point_at_the_prepared_dataset():
    from training.arguments import parse_arguments
    from training.stages import STAGES

    for name, stage in (("lol_replay_cpu_dynamics", "dynamics"), ("lol_replay_cpu_agent", "agent")):
        args = parse_arguments(["--config", str(REPO / "recipes" / f"{name}.yaml")], STAGES)
        assert args.training.stage == stage and args.data.dataset_path == "datasets/lol_replay_cpu_prepared"
