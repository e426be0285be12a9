"""data.prepare on malformed input and faults: nothing lost, nothing silently wrong.

Each test feeds one bad input or fault and checks the outcome: a clean error naming the file (and
frame and key), the previous dataset intact, a warning on stderr and in the report, or a death that
is found. The kill -9 test runs `python -m data.prepare` in a subprocess and is marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.importers import DataError
from data.prepare import main, prepare
from data.schema import RewardSpec, load_prepared
from data.staging import StagedDirectory, find_siblings, recover, sibling_name

REPO = Path(__file__).resolve().parents[1]
BINARY_KEYS = ("ability_q", "ability_w", "ability_e", "ability_r", "summoner_d", "summoner_f", "item_used", "recall_b")


def frame(i: int, **values) -> dict:
    """A complete features entry: every key the default action space and the reward read."""
    return {
        "frame_idx": i, "gold_gained": 0, "health_bar_x": 10, "health_bar_y": 10, "movement_slice": 0,
        **{key: False for key in BINARY_KEYS}, **values,
    }


def write_video(root: Path, video_id: str, frames: list[dict] | None = None, frame_indices=None, shape=(2, 2, 2), latents=None) -> None:
    """`root/latents/<id>.npz` and `root/features/<id>/features.json` (default: 8 complete frames)."""
    frames = [frame(i) for i in range(8)] if frames is None else frames
    if frame_indices is None:
        frame_indices = sorted(f["frame_idx"] for f in frames)
    frame_indices = np.asarray(frame_indices)
    (root / "latents").mkdir(parents=True, exist_ok=True)
    (root / "features" / video_id).mkdir(parents=True, exist_ok=True)
    if latents is None:
        latents = np.zeros((len(frame_indices), *shape), np.float16)
    np.savez(root / "latents" / f"{video_id}.npz", latents=latents, frame_indices=frame_indices)
    (root / "features" / video_id / "features.json").write_text(json.dumps({"video_id": video_id, "frames": frames}))


def cli(root: Path, output: Path, *extra: str) -> int:
    return main(["--latents-dir", str(root / "latents"), "--features-dir", str(root / "features"),
                 "--output", str(output), "--no-progress", *extra])


def run_error(capsys, root: Path, output: Path, *extra: str) -> str:
    """Run the CLI, expect status 1 with `data.prepare: error: ...` and no build folder left; return stderr."""
    assert cli(root, output, *extra) == 1
    err = capsys.readouterr().err
    assert "data.prepare: error: " in err
    assert leftovers(output) == []
    return err


def leftovers(output: Path) -> list[str]:
    """Build, old and trash folders of `output`, and a legacy in-place `.building` folder."""
    names = [s.path.name for s in find_siblings(output)]
    return names + ([".building"] if (output / ".building").exists() else [])


# --- 1. numbers: validated after the cast to the stored type -----------------------------------


def test_huge_gold_is_refused_naming_file_and_frame(tmp_path, capsys):
    """One gold_gained of 1e300 (finite in float64, inf as the stored float32 reward)."""
    frames = [frame(i) for i in range(8)]
    frames[5]["gold_gained"] = 1e300
    write_video(tmp_path / "in", "v", frames)
    err = run_error(capsys, tmp_path / "in", tmp_path / "out")
    features = tmp_path / "in" / "features" / "v" / "features.json"
    assert f"{features}: frame 5: 'gold_gained'" in err and "float32" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_reward_overflowing_float32_is_refused(tmp_path):
    """gold fits float32 but gold_scale * gold does not: named by frame; same for a carried sum."""
    frames = [frame(i) for i in range(8)]
    frames[3]["gold_gained"] = 1e37
    write_video(tmp_path / "in", "v", frames)
    with pytest.raises(DataError, match=r"features.json: frame 3: reward 1e\+39 .* outside float32 range"):
        prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False,
                reward_spec=RewardSpec(gold_scale=100.0))
    # Two rewards of 3e38 each fit float32, but frames 3 and 4 have no latent: both are carried
    # onto frame 5, whose sum 6e38 does not fit.
    frames = [frame(i) for i in range(8)]
    frames[3]["gold_gained"] = frames[4]["gold_gained"] = 3e38
    write_video(tmp_path / "in2", "v", frames, frame_indices=[0, 1, 2, 5, 6, 7])
    with pytest.raises(DataError, match=r"frame 5: reward 6e\+38 \(the sum of the rewards carried"):
        prepare(tmp_path / "in2" / "latents", tmp_path / "in2" / "features", tmp_path / "out", progress=False,
                reward_spec=RewardSpec(gold_scale=1.0))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("gold_gained", float("nan"), "a finite number"),
        ("gold_gained", 10**400, "a finite number within float32 range"),  # a JSON integer too large for any float
        ("gold_gained", "12", "a finite number"),
        ("health_bar_x", "none", "a number or null"),
        ("movement_slice", 3.0, "an integer in 0..17"),
    ],
)
def test_bad_number_names_file_frame_and_key(tmp_path, key, value, expected):
    frames = [frame(i) for i in range(8)]
    frames[6][key] = value
    write_video(tmp_path / "in", "v", frames)
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    assert f"features.json: frame 6: '{key}' must be {expected}" in str(error.value)


def test_absurd_frame_numbers_are_refused(tmp_path):
    """frame_idx 2**31 - 1 in a 4,000-frame video: refused by the gap bound before any allocation;
    2**31 does not fit the stored int32; latents' frame_indices are checked before their cast."""
    frames = [frame(i) for i in range(4000)] + [frame(2**31 - 1)]
    write_video(tmp_path / "in", "v", frames, frame_indices=range(4000))
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    message = str(error.value)
    assert "features.json: frame 2147483647 is 2147479648 frames after the previous known frame 3999" in message
    assert "max_frame_gap = 10000" in message

    write_video(tmp_path / "in2", "v", [frame(0), frame(2**31)], frame_indices=[0])
    with pytest.raises(DataError, match=r"frames\[1\] has no valid 'frame_idx' \(an integer in 0\.\.2147483647"):
        prepare(tmp_path / "in2" / "latents", tmp_path / "in2" / "features", tmp_path / "out", progress=False)

    write_video(tmp_path / "in3", "v", [frame(0)], frame_indices=np.array([2**32], np.int64))
    with pytest.raises(DataError, match=r"v.npz: frame index 4294967296 does not fit int32"):
        prepare(tmp_path / "in3" / "latents", tmp_path / "in3" / "features", tmp_path / "out", progress=False)


def test_frame_gap_bound_is_configurable(tmp_path):
    """A real gap of 50 frames passes with the default bound and is refused with --max-frame-gap 20."""
    write_video(tmp_path / "in", "v", [frame(i) for i in range(5)] + [frame(i) for i in range(55, 60)])
    assert cli(tmp_path / "in", tmp_path / "out") == 0
    assert cli(tmp_path / "in", tmp_path / "out2", "--max-frame-gap", "20") == 1


# --- 2. booleans -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ability_q", "is_dead"])
@pytest.mark.parametrize("value", ["false", "no", 2, 1.0])
def test_non_boolean_flags_are_refused(tmp_path, key, value):
    frames = [frame(i, is_dead=False) for i in range(8)]
    frames[4][key] = value
    write_video(tmp_path / "in", "v", frames)
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    assert f"features.json: frame 4: '{key}' must be true/false (or 0/1), got {value!r}" in str(error.value)


def test_zero_one_flags_are_read_as_booleans(tmp_path):
    frames = [frame(i, ability_q=int(i in (2, 5)), is_dead=int(i >= 6)) for i in range(8)]
    write_video(tmp_path / "in", "v", frames)
    prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    dataset, _ = load_prepared(tmp_path / "out")
    assert dataset["train"]["ability_q"] == [False, False, True, False, False, True, False, False]
    assert np.flatnonzero(dataset["train"]["death"]).tolist() == [6]


# --- 3. partial is_dead, missing keys ------------------------------------------------------------


def test_partial_is_dead_loses_no_death(tmp_path, capsys):
    """is_dead on frames 0..49 only. Death 1 (frame 20) is in is_dead; death 2 (frame 70) only in
    the health bar, on frames without is_dead: both are found, and the report says how."""
    frames = []
    for i in range(100):
        dead = 20 <= i < 26 or 70 <= i < 81
        values = {"health_bar_x": None, "health_bar_y": None} if dead else {}
        if i < 50:
            values["is_dead"] = dead
        frames.append(frame(i, **values))
    write_video(tmp_path / "in", "v", frames)
    assert cli(tmp_path / "in", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "data.prepare: warning: 1 video(s) have 'is_dead' on some frames only (['v'])" in err
    assert "50 frames without it the health-bar rule decided death, and found 1 death(s)" in err
    dataset, _ = load_prepared(tmp_path / "out")
    assert np.flatnonzero(dataset["train"]["death"]).tolist() == [20, 70]
    np.testing.assert_allclose(np.array(dataset["train"]["reward"])[[20, 70]], [-10, -10])
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["deaths"]["total"] == 2
    assert report["deaths"]["from_is_dead"] == 1 and report["deaths"]["from_health_bar"] == 1
    assert report["deaths"]["health_bar_fallback"] == {"videos": ["v"], "frames": 50, "deaths": 1}
    assert report["per_video"]["v"]["death_rule"] == "is_dead+health_bar"
    assert report["missing_keys"]["is_dead"] == 50
    assert any("is_dead" in warning for warning in report["warnings"])


def test_is_dead_wins_where_present(tmp_path):
    """Where is_dead exists it decides: a bar absence of 6 frames with is_dead false is no death."""
    frames = [frame(i, is_dead=False) for i in range(20)]
    for i in range(5, 11):
        frames[i].update(health_bar_x=None, health_bar_y=None)
    write_video(tmp_path / "in", "v", frames)
    report = prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    assert report["deaths"]["total"] == 0 and report["deaths"]["health_bar_rule_total"] == 1
    assert report["per_video"]["v"]["death_rule"] == "is_dead"


SPACE = {"move": {"type": "categorical", "n": 18, "key": "movement_slice"}, "jump": {"type": "binary", "key": "jump_key"}}


def test_action_key_missing_in_one_video_warns(tmp_path, capsys):
    write_video(tmp_path / "in", "a", [frame(i, jump_key=i == 3) for i in range(8)])
    write_video(tmp_path / "in", "b", [frame(i) for i in range(8)])
    assert cli(tmp_path / "in", tmp_path / "out", "--action-space", json.dumps(SPACE)) == 0
    err = capsys.readouterr().err
    assert "data.prepare: warning: key 'jump_key' missing on 8 of 16 frames; on every frame of 1 video(s): ['b']" in err
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["missing_keys"] == {"jump_key": 8}


def test_action_key_matching_nothing_fails(tmp_path, capsys):
    """A typo in --action-space ("jump_key" is "jump" in the files): every label would be False."""
    for video_id in ("a", "b"):
        write_video(tmp_path / "in", video_id, [frame(i, jump=i == 3) for i in range(8)])
    err = run_error(capsys, tmp_path / "in", tmp_path / "out", "--action-space", json.dumps(SPACE))
    assert "action component 'jump' reads the key 'jump_key', which no frame of any video has" in err
    assert "'jump'" in err.split("keys present: ")[1] and str(tmp_path / "in" / "features") in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_default_component_missing_everywhere_warns(tmp_path, capsys):
    """With the default action space, a component no file has is a warning (docs/data.md)."""
    write_video(tmp_path / "in", "a", [{k: v for k, v in frame(i).items() if k != "item_used"} for i in range(8)])
    assert cli(tmp_path / "in", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "warning: key 'item_used' missing on 8 of 8 frames" in err
    assert "action component 'item_used' reads the key 'item_used', which no frame of any video has" in err
    assert "default action space" in err


# --- 4. output: built aside, moved into place when complete ------------------------------------


def test_overwrite_with_bad_input_keeps_old_dataset(tmp_path, capsys):
    good, bad, output = tmp_path / "good", tmp_path / "bad", tmp_path / "out"
    write_video(good, "a", [frame(i, gold_gained=10 * i) for i in range(8)])
    assert cli(good, output) == 0
    before = load_prepared(output)[0]["train"]["reward"]
    write_video(bad, "a")
    write_video(bad, "b")
    (bad / "features" / "b" / "features.json").write_text('{"frames": [')
    err = run_error(capsys, bad, output, "--overwrite")
    assert str(bad / "features" / "b" / "features.json") in err and "not valid JSON" in err
    dataset, _ = load_prepared(output)
    assert dataset["train"]["reward"] == before and len(before) == 8
    assert leftovers(output) == []
    # A failure after the import (a component missing everywhere) keeps it too.
    write_video(bad, "b")
    assert cli(bad, output, "--overwrite", "--action-space", json.dumps(SPACE)) == 1
    assert load_prepared(output)[0]["train"]["reward"] == before and leftovers(output) == []
    # And a good run replaces it.
    assert cli(bad, output, "--overwrite") == 0
    assert len(load_prepared(output)[0]["train"]) + len(load_prepared(output)[0]["validation"]) == 16
    assert leftovers(output) == []


def test_write_failure_keeps_old_dataset(tmp_path, monkeypatch, capsys):
    """A full disk during the save: the error names the output, the old dataset stays, no leftovers."""
    import datasets.arrow_writer

    write_video(tmp_path / "in", "a")
    output = tmp_path / "out"
    assert cli(tmp_path / "in", output) == 0

    # The rows go straight into the split's shard (data.prepare.SplitWriter); the disk fills up
    # half-way through writing one.
    def disk_full(self, table, writer_batch_size=None):
        self.stream.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write_table", disk_full)
    err = run_error(capsys, tmp_path / "in", output, "--overwrite")
    assert f"{output}: cannot write the prepared dataset" in err and "No space left on device" in err
    assert f"{output} was left as it was" in err
    assert len(load_prepared(output)[0]["train"]) == 8 and leftovers(output) == []


def test_output_path_is_a_file(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    (tmp_path / "out").write_text("not a folder")
    err = run_error(capsys, tmp_path / "in", tmp_path / "out", "--overwrite")
    assert f"{tmp_path / 'out'}: the output path exists and is not a folder" in err
    assert (tmp_path / "out").read_text() == "not a folder"
    (tmp_path / "file").write_text("x")
    err = run_error(capsys, tmp_path / "in", tmp_path / "file" / "out")
    assert f"{tmp_path / 'file'} is not a folder" in err


def _make_read_only(path: Path) -> bool:
    """Make a folder read-only for this process: chmod for a normal user; root ignores modes, so
    the immutable attribute there. False if neither works here."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


@pytest.mark.parametrize("which", ["parent", "output"])
def test_read_only_output_folder(tmp_path, capsys, which):
    """The folder that holds --output is read-only, or --output itself is an empty read-only folder."""
    write_video(tmp_path / "in", "a")
    folder = tmp_path / "ro"
    folder.mkdir()
    output = folder / "out" if which == "parent" else folder
    if not _make_read_only(folder):
        pytest.skip("cannot make a read-only folder here (no chattr as root)")
    try:
        err = run_error(capsys, tmp_path / "in", output)
    finally:
        _make_writable(folder)
    expected = f"{folder} is not writable" if which == "parent" else f"{folder}: the output folder is read-only"
    assert expected in err
    assert list(folder.iterdir()) == [] and leftovers(output) == []


def test_mkdir_failure_is_a_clean_error(tmp_path, monkeypatch, capsys):
    """The build folder cannot be created (permission, quota): a DataError, not a traceback."""
    write_video(tmp_path / "in", "a")
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if ".out.tmp-" in self.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    err = run_error(capsys, tmp_path / "in", tmp_path / "out")
    assert f"{tmp_path / 'out'}: cannot write the prepared dataset" in err and "Permission denied" in err


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_recover_after_kill_between_the_two_renames(tmp_path, capsys):
    """State of a run killed between "old aside" and "new in": the output is absent and the old
    dataset is complete under .out.old-*. load_prepared says where it is; the next run restores it
    and removes the dead run's build folder, then proceeds (here: refuses without --overwrite)."""
    write_video(tmp_path / "in", "a")
    output = tmp_path / "out"
    assert cli(tmp_path / "in", output) == 0
    host, pid = socket.gethostname(), _dead_pid()
    old = tmp_path / sibling_name(output, "old", host, pid, "0badc0de")
    build = tmp_path / sibling_name(output, "tmp", host, pid, "0badc0df")
    os.rename(output, old)
    build.mkdir()
    (build / "dataset_dict.json").write_text("{}")  # a complete-looking folder that was never published
    with pytest.raises(FileNotFoundError, match=r"left the previous dataset at .*\.out\.old-"):
        load_prepared(output)
    assert cli(tmp_path / "in", output) == 1
    err = capsys.readouterr().err
    assert f"data.prepare: warning: restored {output} from {old.name}, left by an interrupted run" in err
    assert f"warning: removed {build.name}" in err and "exists and is not empty (pass --overwrite" in err
    assert len(load_prepared(output)[0]["train"]) == 8 and leftovers(output) == []


def test_recover_leaves_live_and_foreign_folders(tmp_path):
    output = tmp_path / "out"
    host = socket.gethostname()
    live = tmp_path / sibling_name(output, "tmp", host, os.getppid(), "00000001")
    foreign = tmp_path / sibling_name(output, "tmp", "other-host", _dead_pid(), "00000002")
    dead_trash = tmp_path / sibling_name(output, "trash", host, _dead_pid(), "00000003")
    dead_old = tmp_path / sibling_name(output, "old", host, _dead_pid(), "00000004")
    unrelated = tmp_path / ".outer.tmp-x-1-00000005"  # another destination's folder
    for folder in (live, foreign, dead_trash, dead_old, unrelated):
        folder.mkdir()
    output.mkdir()  # the swap completed: a leftover old folder is deleted, not restored
    actions = recover(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, unrelated.name, "out"])
    assert len(actions) == 2


def test_staged_directory_discards_on_error_and_refuses_non_empty(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with StagedDirectory(output) as stage:
            (stage.path / "x").write_text("partial")
            raise RuntimeError("fault")
    assert list(tmp_path.iterdir()) == []
    output.mkdir()
    (output / "keep").write_text("user data")
    with pytest.raises(FileExistsError):
        with StagedDirectory(output, replace=False) as stage:
            stage.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (output / "keep").read_text() == "user data"


def test_load_prepared_checks_schema_against_columns(tmp_path):
    write_video(tmp_path / "in", "a")
    prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    schema_file = tmp_path / "out" / "dreamer_schema.json"
    schema = json.loads(schema_file.read_text())
    schema["latent_shape"] = [4, 2, 2]
    schema_file.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match=r"stores 8 latent values per frame, but the schema's latent shape \(4, 2, 2\) has 16"):
        load_prepared(tmp_path / "out")


def test_load_prepared_names_a_damaged_dataset(tmp_path):
    """A split file cut in half after the fact (not something data.prepare leaves): a ValueError
    naming the folder instead of an Arrow error from deep inside datasets."""
    write_video(tmp_path / "in", "a", [frame(i) for i in range(200)])
    prepare(tmp_path / "in" / "latents", tmp_path / "in" / "features", tmp_path / "out", progress=False)
    shard = next((tmp_path / "out" / "train").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{tmp_path / 'out'}: the prepared dataset does not load"):
        load_prepared(tmp_path / "out")


# --- 5. unclear messages --------------------------------------------------------------------------


def test_shape_mismatch_names_the_odd_file(tmp_path):
    """Three videos, the first (alphabetically) is the odd one: it is named, not 'b'."""
    root = tmp_path / "in"
    write_video(root, "a", shape=(2, 2, 3))
    write_video(root, "b")
    write_video(root, "c")
    with pytest.raises(DataError) as error:
        prepare(root / "latents", root / "features", tmp_path / "out", progress=False)
    message = str(error.value)
    assert message.startswith(f"{root / 'latents' / 'a.npz'}: latent shape mismatch: frames are (2, 2, 3), while 2 of 3 videos have (2, 2, 2)")
    assert "b.npz" not in message
    # Declared: the declared shape is the reference, and every file that differs is listed.
    with pytest.raises(DataError) as error:
        prepare(root / "latents", root / "features", tmp_path / "out", progress=False, latent_shape=(2, 2, 3))
    assert str(error.value).startswith(f"{root / 'latents' / 'b.npz'}: latent shape mismatch: frames are (2, 2, 2), expected (2, 2, 3)")
    assert "2 of 3 videos differ" in str(error.value)
    # A tie: no reference can be chosen; both shapes and files are listed.
    shutil.rmtree(root / "features" / "c")
    (root / "latents" / "c.npz").unlink()
    with pytest.raises(DataError) as error:
        prepare(root / "latents", root / "features", tmp_path / "out", progress=False)
    message = str(error.value)
    assert "no shape is more common than the others" in message and "--latent-shape" in message
    assert str(root / "latents" / "a.npz") in message and str(root / "latents" / "b.npz") in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"move": {"type": "categorical", "n": 18', "--action-space: not valid JSON (neither a JSON file nor valid inline JSON)"),
        ('["movement"]', "--action-space: expected a JSON object of components"),
        ('{"move": {"type": "categorical", "n": 1}}', "--action-space: action component 'move'"),
        ('{"move": {"type": "binary", "key": 3}}', "component 'move': 'key' must be a features key"),
        ('{"latents": {"type": "binary"}}', "reserved"),
        ("[" * 100_000 + "]" * 100_000, "--action-space: not a valid action space (JSON nested too deeply)"),
    ],
)
def test_bad_action_space_is_a_clean_error(tmp_path, capsys, text, expected):
    write_video(tmp_path / "in", "a")
    err = run_error(capsys, tmp_path / "in", tmp_path / "out", "--action-space", text)
    assert expected in err


def test_bad_action_space_file_is_named(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    space = tmp_path / "space.json"
    space.write_text('{"move": ')
    err = run_error(capsys, tmp_path / "in", tmp_path / "out", "--action-space", str(space))
    assert f"data.prepare: error: {space}: not valid JSON" in err


def test_deeply_nested_features_json(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    features = tmp_path / "in" / "features" / "a" / "features.json"
    features.write_text('{"frames": ' + "[" * 100_000 + "]" * 100_000 + "}")
    err = run_error(capsys, tmp_path / "in", tmp_path / "out")
    assert f"{features}: not valid features JSON (nested too deeply)" in err


def test_npy_saved_as_npz(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    latents = tmp_path / "in" / "latents" / "a.npz"
    with open(latents, "wb") as file:
        np.save(file, np.zeros((8, 2, 2, 2), np.float16))
    err = run_error(capsys, tmp_path / "in", tmp_path / "out")
    assert f"{latents}: a single .npy array of shape (8, 2, 2, 2), not an .npz archive" in err


def test_bad_numeric_arguments_are_usage_errors(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    for extra, expected in (
        (["--gold-scale", "nan"], "gold_scale must be a finite number"),
        (["--death-min-frames", "0"], "death_min_frames must be an integer >= 1"),
        (["--max-frame-gap", "0"], "--max-frame-gap must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli(tmp_path / "in", tmp_path / "out", *extra)
        assert exit_.value.code == 2 and expected in capsys.readouterr().err
    for extra, expected in (
        (["--validation-fraction", "1.5"], "--validation-fraction must be in [0, 1)"),
        (["--latent-shape", "0", "2", "2"], "--latent-shape must be three positive integers"),
    ):
        assert expected in run_error(capsys, tmp_path / "in", tmp_path / "out", *extra)


@pytest.mark.parametrize(
    "setup, where, message",
    [
        ("negative_frame_index", "latents", "negative frame index -1"),
        ("latents_beyond_float16", "latents", "NaN or inf on 1 frame(s), first at frame 2 (after the cast to the stored float16"),
        ("integer_latents", "latents", "latents must be floating point, got dtype int32"),
        ("features_not_object", "features", "expected a JSON object with a 'frames' list"),
        ("frame_idx_not_integer", "features", "frames[3] has no valid 'frame_idx'"),
        ("duplicate_frame_idx", "features", "duplicate frame_idx 2 (frames[3])"),
    ],
)
def test_more_bad_files_are_named(tmp_path, capsys, setup, where, message):
    root = tmp_path / "in"
    frames, frame_indices, latents = [frame(i) for i in range(8)], None, None
    if setup == "negative_frame_index":
        frame_indices = [-1, *range(1, 8)]
    elif setup == "latents_beyond_float16":
        latents = np.zeros((8, 2, 2, 2))
        latents[2, 0, 0, 0] = 1e5
    elif setup == "integer_latents":
        latents = np.zeros((8, 2, 2, 2), np.int32)
    elif setup == "frame_idx_not_integer":
        frames[3]["frame_idx"] = "3"
        frame_indices = range(8)
    elif setup == "duplicate_frame_idx":
        frames[3]["frame_idx"] = 2
        frame_indices = range(8)
    write_video(root, "v", frames, frame_indices=frame_indices, latents=latents)
    if setup == "features_not_object":
        (root / "features" / "v" / "features.json").write_text("[1, 2]")
    err = run_error(capsys, root, tmp_path / "out")
    path = root / "latents" / "v.npz" if where == "latents" else root / "features" / "v" / "features.json"
    assert f"data.prepare: error: {path}: " in err and message in err


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    err = run_error(capsys, tmp_path / "in", tmp_path / "out", "--overwrite")
    assert "refusing to overwrite a folder that is not a prepared dataset" in err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_header_video_id_mismatch_warns(tmp_path, capsys):
    write_video(tmp_path / "in", "a")
    features = tmp_path / "in" / "features" / "a" / "features.json"
    features.write_text(features.read_text().replace('"video_id": "a"', '"video_id": "zz"'))
    assert cli(tmp_path / "in", tmp_path / "out") == 0
    assert "data.prepare: warning: 1 features.json header video_id(s) differ from their folder name: {'a': 'zz'}" in capsys.readouterr().err


def test_interrupt_keeps_old_dataset(tmp_path, monkeypatch, capsys):
    """Ctrl-C half-way through the import: status 130, the old dataset intact, nothing left."""
    import data.prepare

    write_video(tmp_path / "in", "a")
    write_video(tmp_path / "in", "b")
    output = tmp_path / "out"
    assert cli(tmp_path / "in", output) == 0
    calls = []
    real_import = data.prepare.import_video

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_import(*args, **kwargs)

    monkeypatch.setattr(data.prepare, "import_video", interrupted)
    assert cli(tmp_path / "in", output, "--overwrite") == 130
    assert f"interrupted; {output} was left as it was" in capsys.readouterr().err
    dataset, _ = load_prepared(output)
    assert len(dataset["train"]) + len(dataset["validation"]) == 16 and leftovers(output) == []


# --- 6. kill -9 during a run ------------------------------------------------------------------------


def _kill_when(args: list[str], ready, timeout: float = 120.0) -> bool:
    """Start `python -m data.prepare args`; SIGKILL it as soon as `ready()` holds. Returns whether
    it was killed (False: it finished before `ready()` was seen)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "data.prepare", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _build_files(output: Path, name: str) -> list[Path]:
    return [s.path / name for s in find_siblings(output) if s.kind == "tmp" and (s.path / name).exists()]


@pytest.mark.slow
def test_kill_9_leaves_old_dataset_or_none(tmp_path):
    """Kill `data.prepare --overwrite` at several points of building and saving: afterwards the
    output is the old dataset (or, for a first run, nothing), and a rerun cleans up and succeeds."""
    old_in, new_in, output = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    write_video(old_in, "a")
    # The new input is large enough (48 MB of latents) that saving takes a while.
    for video_id in ("a", "b", "c"):
        write_video(new_in, video_id, [frame(i) for i in range(2000)], shape=(8, 32, 16))
    args = ["--latents-dir", str(new_in / "latents"), "--features-dir", str(new_in / "features"),
            "--output", str(output), "--no-progress", "--overwrite"]

    def after_tmp():
        return any(s.kind == "tmp" for s in find_siblings(output))

    # The rows are written straight into the split shards (data.prepare.SplitWriter), which are
    # renamed to their final names once every video is imported.
    points = {
        "build folder created": lambda: any(s.kind == "tmp" for s in find_siblings(output)),
        "importing (train shard being written)": lambda: bool(_build_files(output, "train/shard-00000.arrow.partial")),
        "shards named (split metadata being written)": lambda: bool(_build_files(output, "train/data-00000-of-00001.arrow")),
        "saved (report written)": lambda: bool(_build_files(output, "prepare_report.json")),
    }
    outcomes = {}
    for first_run in (True, False):
        for point, ready in points.items():
            recover(output)  # what the killed run left, so that `ready` sees only the new run
            if output.exists():
                shutil.rmtree(output)
            if not first_run:
                assert main(["--latents-dir", str(old_in / "latents"), "--features-dir", str(old_in / "features"),
                             "--output", str(output), "--no-progress"]) == 0
            killed = _kill_when(args, ready)
            if (output / "dataset_dict.json").exists():
                dataset, _ = load_prepared(output)
                frames = len(dataset["train"]) + len(dataset["validation"])
            else:
                # Nothing at all, never a partial folder; only between the two renames of the swap
                # is the old dataset aside (complete), and the next run restores it.
                assert not output.exists(), f"{point}: partial output {sorted(p.name for p in output.iterdir())}"
                aside = [s for s in find_siblings(output) if s.kind == "old"]
                frames = None if first_run else (aside and "aside")
            # Before the kill: nothing (first run) or the old 8 frames; after the swap: the new 6,000.
            assert frames in ((None, 6000) if first_run else (8, "aside", 6000)), (point, frames)
            outcomes[(first_run, point)] = (killed, frames)
    # The first three points come long before the swap on any machine: killed, nothing published.
    for first_run in (True, False):
        for point in list(points)[:3]:
            assert outcomes[(first_run, point)] == (True, None if first_run else 8), (first_run, point, outcomes)
    assert main(args) == 0  # the rerun removes what the killed run left and publishes the new dataset
    assert leftovers(output) == [] and len(load_prepared(output)[0]["train"]) > 0
