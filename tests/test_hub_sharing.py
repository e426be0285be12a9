"""Sharing on the Hub, against a stand-in for it: what `PreTrainedModel.push_to_hub`, `HfApi.upload_folder` and
`train.py --push_to_hub` would upload (repository ids and types, files, their bytes, the model card), with no
network. The stand-in replaces the `huggingface_hub.HfApi` methods the libraries call (`create_repo`,
`create_commit`, `create_branch`, and `_validate_yaml`, the Hub's check of a README's metadata, here parsed
locally) and the card download of `ModelCard.load`; `upload_folder` is made to take its
single-commit path (without `hf_xet`'s streamed upload, which talks HTTP itself), so the folder walk, the ignore
rules and the commit are the library's own."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = {"hidden_size": 32, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "time_every": 2, "num_latent_tokens": 4, "latent_token_dim": 8,
             "latent_channels": 8, "latent_height": 2, "latent_width": 2}


@dataclass
class Commit:
    repo_id: str
    repo_type: str
    message: str
    files: dict[str, bytes]


@dataclass
class RecordingHub:
    """Every repository created and every commit made, in order; the files as the Hub would hold them."""

    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    validated: list[str] = field(default_factory=list)
    root: Path | None = None

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The repository's files after every commit."""
        state: dict[str, bytes] = {}
        for commit in self.commits:
            if commit.repo_id == repo_id:
                state.update(commit.files)
        return state

    # ---- the HfApi methods, as the libraries call them ----

    def create_repo(self, repo_id: str, *, token: Any = None, private: bool | None = None, repo_type: str | None = None,
                    exist_ok: bool = False, **kwargs: Any) -> Any:
        from huggingface_hub import RepoUrl

        repo_type = repo_type or "model"
        if repo_id in self.repos and not exist_ok:
            raise AssertionError(f"create_repo({repo_id!r}) twice without exist_ok")
        self.repos.setdefault(repo_id, {"repo_type": repo_type, "private": private})
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def create_commit(self, repo_id: str, operations: list[Any], *, commit_message: str, repo_type: str | None = None,
                      **kwargs: Any) -> Any:
        from huggingface_hub import CommitInfo

        repo_type = repo_type or "model"
        assert repo_id in self.repos, f"commit to {repo_id!r} before create_repo"
        assert self.repos[repo_id]["repo_type"] == repo_type, (repo_id, repo_type)
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            if isinstance(source, (str, Path)):
                files[operation.path_in_repo] = Path(source).read_bytes()
            elif isinstance(source, bytes):
                files[operation.path_in_repo] = source
            else:
                files[operation.path_in_repo] = source.read()
        self.commits.append(Commit(repo_id, repo_type, commit_message, files))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return CommitInfo(commit_url=f"https://huggingface.co/{prefix}{repo_id}/commit/{len(self.commits):040x}",
                          commit_message=commit_message, commit_description="", oid=f"{len(self.commits):040x}")

    def validate_yaml(self, content: str, *, repo_type: str | None = None, **kwargs: Any) -> None:
        """The Hub parses a README's YAML header before accepting the upload; so does the stand-in."""
        from huggingface_hub import RepoCard

        RepoCard(content)  # raises ValueError on invalid metadata
        self.validated.append(repo_type or "model")

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str | None = None, **kwargs: Any) -> str:
        """What `ModelCard.load(repo_id)` fetches: the file if a commit put it there, else the Hub's 404."""
        from huggingface_hub.errors import EntryNotFoundError

        stored = self.files(repo_id).get(filename)
        if stored is None:
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        assert self.root is not None
        path = self.root / repo_id.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored)
        return str(path)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingHub:
    import huggingface_hub.hf_api
    import huggingface_hub.repocard
    from huggingface_hub import HfApi

    stand_in = RecordingHub(root=tmp_path / "hub_downloads")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: stand_in.create_repo(repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: stand_in.create_commit(
        repo_id, operations, **kw))
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: stand_in.validate_yaml(content, **kw))
    monkeypatch.setattr(HfApi, "create_branch", lambda self, *a, **kw: pytest.fail("no branch is made"))
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", stand_in.hf_hub_download)
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    monkeypatch.setenv("HF_TOKEN", "hf_standin")  # nothing leaves the machine; some paths want a token to exist
    return stand_in


def train(*argv: str) -> dict[str, float]:
    from training.arguments import parse_arguments
    from training.loop import train as run
    from training.stages import STAGES

    args = parse_arguments(list(argv), STAGES)
    return run(STAGES[args.training.stage](args), args)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pygame", reason="CartPole renders with pygame (the envs extra)")
    from envs.record import record_episodes

    folder = tmp_path_factory.mktemp("hub") / "recording"
    record_episodes("CartPole-v1", folder, "random", episodes=4, seed=0, frame_size=32, max_steps=12, progress=False)
    return folder


@pytest.fixture(scope="module")
def tokenizer_folder(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained for one step by `train.py --stage tokenizer` (its final/ has the run's model card)."""
    output = tmp_path_factory.mktemp("tokenizer_run")
    train("--stage", "tokenizer", "--dataset_path", str(recording), "--output_dir", str(output), "--model_overrides",
          json.dumps(TOKENIZER), "--window_length", "4", "--per_device_train_batch_size", "2", "--max_steps", "1",
          "--validation_episode_fraction", "0.25", "--report_to", "none", "--save_steps", "0", "--seed", "0")
    return output / "final"


def test_a_recording_goes_up_as_a_dataset_repository_that_datasets_reads_back(hub: RecordingHub, recording: Path,
                                                                               tmp_path: Path) -> None:
    import datasets

    from envs.hub import push_recording

    assert push_recording(recording, "org/cartpole-episodes") == "org/cartpole-episodes"
    assert hub.repos == {"org/cartpole-episodes": {"repo_type": "dataset", "private": None}}
    [commit] = hub.commits
    assert commit.repo_type == "dataset" and "CartPole-v1" in commit.message and hub.validated == ["dataset"]
    on_disk = {str(p.relative_to(recording)) for p in recording.rglob("*") if p.is_file()}
    assert set(commit.files) == on_disk == {"README.md", "recording.json", "data/train-00000-of-00001.parquet"}
    for name, content in commit.files.items():
        assert content == (recording / name).read_bytes(), name
    # What the Hub holds loads as the recording: the card's data_files config points at the parquet shard.
    mirror = tmp_path / "mirror"
    for name, content in commit.files.items():
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(content)
    rows = datasets.load_dataset(str(mirror), split="train")
    assert len(rows) == json.loads(commit.files["recording.json"])["frames"]
    assert {"frame", "action", "reward", "terminated", "truncated"} <= set(rows.column_names)


def test_record_pushes_with_push_to_hub(hub: RecordingHub, tmp_path: Path) -> None:
    pytest.importorskip("pygame")
    from envs.record import main

    assert main(["--env", "CartPole-v1", "--policy", "random", "--episodes", "2", "--frame-size", "16", "--max-steps",
                 "5", "--output", str(tmp_path / "rec"), "--no-progress", "--push-to-hub", "org/rec"]) == 0
    assert hub.repos["org/rec"]["repo_type"] == "dataset"
    assert "data/train-00000-of-00001.parquet" in hub.files("org/rec")


def test_push_model_uploads_the_weights_config_remote_code_and_the_runs_own_card(
        hub: RecordingHub, tokenizer_folder: Path) -> None:
    from huggingface_hub import ModelCard
    from safetensors.torch import load

    from envs.hub import push_model
    from modeling_dreamer import DreamerTokenizer

    assert push_model(tokenizer_folder, "org/cartpole-tokenizer") == "org/cartpole-tokenizer"
    assert hub.repos["org/cartpole-tokenizer"]["repo_type"] == "model"
    weights_commit, card_commit = hub.commits
    # 1. PreTrainedModel.push_to_hub: save_pretrained's files (the modeling code travels for trust_remote_code).
    assert {"config.json", "model.safetensors", "README.md"} <= set(weights_commit.files)
    assert any(name.endswith(".py") for name in weights_commit.files)
    expected = DreamerTokenizer.from_pretrained(tokenizer_folder).state_dict()
    pushed = load(weights_commit.files["model.safetensors"])
    assert set(pushed) == set(expected) and all((pushed[k] == expected[k]).all() for k in expected)
    assert json.loads(weights_commit.files["config.json"])["architectures"] == ["DreamerTokenizer"]
    # 2. then the run's model card replaces transformers' template.
    assert set(card_commit.files) == {"README.md"}
    card = ModelCard(hub.files("org/cartpole-tokenizer")["README.md"].decode())
    assert card.content == (tokenizer_folder / "README.md").read_text()
    assert "dreamerv4" in card.data.tags and card.data.library_name == "transformers"
    assert "eval/psnr" in {result.metric_type for result in card.data.eval_results}


def test_an_agent_pushed_with_its_tokenizers_hub_id(hub: RecordingHub, tokenizer_folder: Path, tmp_path: Path) -> None:
    from envs.hub import push_model
    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerTokenizer
    from modeling_dreamer.agent import tokenizer_identity

    tokenizer = DreamerTokenizer.from_pretrained(tokenizer_folder)
    name, digest = tokenizer_identity(tokenizer)
    config = DreamerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           time_every=2, num_register_tokens=1, k_max=4, mtp_length=1, num_bins=17,
                           latent_channels=8, latent_height=2, latent_width=2, tokenizer_name=name, tokenizer_hash=digest,
                           action_space={"action": {"type": "categorical", "n": 2}})
    DreamerAgentModel(config).save_pretrained(tmp_path / "agent")
    push_model(tmp_path / "agent", "org/cartpole-agent", config_updates={"tokenizer_name": "org/cartpole-tokenizer"})
    [commit] = hub.commits  # a folder without a model card: push_to_hub's commit only
    pushed = json.loads(commit.files["config.json"])
    assert pushed["tokenizer_name"] == "org/cartpole-tokenizer" and pushed["tokenizer_hash"] == digest
    assert json.loads((tmp_path / "agent" / "config.json").read_text())["tokenizer_name"] == name  # folder unchanged
    with pytest.raises(ValueError, match="no field"):
        push_model(tmp_path / "agent", "org/x", config_updates={"tokeniser_name": "typo"})


def test_train_push_to_hub_takes_push_to_hub_with_the_hub_model_id(hub: RecordingHub, recording: Path,
                                                                  tmp_path: Path) -> None:
    """`train.py --push_to_hub --hub_model_id X`: the loop's `finish` pushes the final model to X."""
    from safetensors.torch import load, load_file

    output = tmp_path / "run"
    train("--stage", "tokenizer", "--dataset_path", str(recording), "--output_dir", str(output), "--model_overrides",
          json.dumps(TOKENIZER), "--window_length", "4", "--per_device_train_batch_size", "2", "--max_steps", "1",
          "--validation_episode_fraction", "0.25", "--report_to", "none", "--save_steps", "0", "--seed", "0",
          "--push_to_hub", "true", "--hub_model_id", "org/run-tokenizer")
    assert list(hub.repos) == ["org/run-tokenizer"]
    commit, card = hub.commits  # the weights with push_to_hub, then the run's own card over the template one
    assert {"config.json", "model.safetensors"} <= set(commit.files) and set(card.files) == {"README.md"}
    final = load_file(str(output / "final" / "model.safetensors"))
    pushed = load(commit.files["model.safetensors"])
    assert set(pushed) == set(final) and all((pushed[k] == final[k]).all() for k in final)


def test_train_push_to_hub_uploads_the_runs_own_model_card(hub: RecordingHub, recording: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    train("--stage", "tokenizer", "--dataset_path", str(recording), "--output_dir", str(output), "--model_overrides",
          json.dumps(TOKENIZER), "--window_length", "4", "--per_device_train_batch_size", "2", "--max_steps", "1",
          "--validation_episode_fraction", "0.25", "--report_to", "none", "--save_steps", "0", "--seed", "0",
          "--push_to_hub", "true", "--hub_model_id", "org/run-tokenizer")
    assert hub.files("org/run-tokenizer")["README.md"] == (output / "final" / "README.md").read_bytes()
