"""Training runs against faults and misuse: nothing is lost or silently wrong (docs/training.md, "What happens
when"). Each test uses the tiny loop of tests/conftest.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rank_probe import record_rank_state

from data.sampler import MixtureSampler
from modeling_dreamer.errors import RunError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(run_training, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    with record_rank_state():
        run_training(out, "--stage", "agent", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "0")
    return out


def test_a_finished_run_is_not_overwritten(run_training, finished_run: Path) -> None:
    final = (finished_run / "final" / "model.safetensors").read_bytes()
    log = (finished_run / "metrics.jsonl").read_text()
    with pytest.raises(RunError, match="output_dir is not empty .*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        run_training(finished_run, "--stage", "agent", "--max_steps", "1")
    assert (finished_run / "final" / "model.safetensors").read_bytes() == final
    assert (finished_run / "metrics.jsonl").read_text() == log


def test_overwrite_output_dir_replaces_the_old_run(run_training, tmp_path: Path) -> None:
    run_training(tmp_path, "--stage", "dynamics", "--max_steps", "2", "--save_steps", "1")
    (tmp_path / "notes.txt").write_text("mine")
    run_training(tmp_path, "--stage", "dynamics", "--max_steps", "1", "--overwrite_output_dir", "true")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]  # checkpoint-2 is gone
    assert (tmp_path / "notes.txt").read_text() == "mine"  # files that are not the run's own are kept
    assert [json.loads(x).get("step") for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1] == 1


def test_latest_without_a_checkpoint_is_an_error(run_training, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint in"):
        run_training(tmp_path, "--stage", "agent", "--max_steps", "1", "--resume_from_checkpoint", "latest")
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_second_run_in_the_same_folder_stops_at_once(run_training, tmp_path: Path) -> None:
    """Another process holds the run folder (a run in progress): this run refuses it; when that process is gone
    (however it ended) the folder is free again."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from training.checkpointing import RunLock;"
         f"lock = RunLock(Path({str(tmp_path)!r})); lock.acquire(); print('locked', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match="another run .pid \\d+. is using this output_dir"):
            run_training(tmp_path, "--stage", "dynamics", "--max_steps", "1")
    finally:
        holder.kill()
        holder.wait()
    run_training(tmp_path, "--stage", "dynamics", "--max_steps", "1", "--overwrite_output_dir", "true")
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_resume_with_another_batch_size_continues_at_the_same_draw(run_training, finished_run: Path,
                                                                     tmp_path: Path) -> None:
    """Straight: 4 steps of 4 windows. Resumed from step 2 (8 draws) with batches of 2: the next steps train on
    draws 8, 9, 10, ... of the same epoch: nothing replayed, nothing skipped."""
    import shutil

    shutil.copytree(finished_run / "checkpoint-2", tmp_path / "checkpoint-2")
    with record_rank_state():
        run_training(tmp_path, "--stage", "agent", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "0",
                     "--resume_from_checkpoint", "latest", "--per_device_train_batch_size", "2")
    straight = json.loads((finished_run / "rank_state_0.json").read_text())["windows"]
    resumed = json.loads((tmp_path / "rank_state_0.json").read_text())["windows"]
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_batch_size"] == 2 and state["draws_in_epoch"] == 12
    # The global draw sequence, computed independently from the sampler's definition (seed 11, p = 0.5).
    from data.schema import load_prepared
    from data.windows import WindowDataset

    windows = WindowDataset(load_prepared(state["arguments"]["dataset_path"])[0]["train"], 8)
    sequence = [list(d) for d in zip(*(a.tolist() for a in MixtureSampler(
        len(windows), windows.relevant_windows(), 0.5, seed=11).epoch_sequence(0)))]
    assert straight == sequence[:16]
    assert resumed == sequence[8:12]


def test_resume_with_a_changed_learning_rate_is_refused(run_training, finished_run: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(finished_run / "checkpoint-2", tmp_path / "checkpoint-2")
    with pytest.raises(RunError, match="learning_rate: 0.003 in the checkpoint, 0.01 now"):
        run_training(tmp_path, "--stage", "agent", "--max_steps", "4", "--resume_from_checkpoint", "latest",
                     "--learning_rate", "0.01")


def test_resume_of_another_stage_is_refused_before_any_weight_loads(run_training, finished_run: Path, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture) -> None:
    import shutil

    shutil.copytree(finished_run / "checkpoint-2", tmp_path / "checkpoint-2")
    with pytest.raises(RunError, match="a checkpoint of stage 'agent'; this run is stage 'dynamics'"):
        run_training(tmp_path, "--stage", "dynamics", "--max_steps", "4", "--resume_from_checkpoint", "latest")
    output = capfd.readouterr()
    assert "MISSING" not in output.out + output.err and "UNEXPECTED" not in output.out + output.err


@pytest.mark.parametrize("file", ["optimizer.bin", "model.safetensors", "rms_state.safetensors"])
def test_a_corrupt_checkpoint_file_is_named(run_training, finished_run: Path, tmp_path: Path, file: str) -> None:
    import shutil

    shutil.copytree(finished_run / "checkpoint-2", tmp_path / "checkpoint-2")
    path = tmp_path / "checkpoint-2" / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(RunError, match=f"checkpoint-2/{file}"):
        run_training(tmp_path, "--stage", "agent", "--max_steps", "4", "--resume_from_checkpoint", "latest")


def test_init_from_problems_name_the_folder(run_training, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="missing_model: no such folder"):
        run_training(tmp_path / "a", "--stage", "agent", "--init_from", str(tmp_path / "missing_model"))
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(RunError, match="empty_model: no config.json"):
        run_training(tmp_path / "b", "--stage", "agent", "--init_from", str(tmp_path / "empty_model"))


def test_an_output_dir_that_cannot_be_a_folder_is_an_error(run_training, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunError, match="a_file"):
        run_training(tmp_path / "a_file" / "run", "--stage", "dynamics", "--max_steps", "1")


def test_non_finite_weights_are_never_saved_as_final(run_training, finished_run: Path, tmp_path: Path) -> None:
    """Start from a model with one infinite weight: every step's loss is NaN and is skipped, the weights stay
    non-finite, and the run fails instead of writing final/ (saying where the last checkpoint is)."""
    from modeling_dreamer import DreamerAgentModel

    model = DreamerAgentModel.from_pretrained(finished_run / "final")
    with torch.no_grad():
        model.dreamer.latent_out.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path / "diverged")
    with pytest.raises(RunError, match="not saving .*final.*not finite"):
        run_training(tmp_path / "run", "--stage", "agent", "--init_from", str(tmp_path / "diverged"),
                     "--max_steps", "2", "--eval_steps", "0")
    assert not (tmp_path / "run" / "final").exists()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r] == [1, 2]
