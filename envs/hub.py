"""Sharing on the Hugging Face Hub: a trained model folder, and a recording of `python -m envs.record`.

- :func:`push_model`: a `save_pretrained` folder (a tokenizer, a world model or an agent) goes up with the
  library's own `PreTrainedModel.push_to_hub`, then the folder's model card (`README.md`, written by
  `train.py`: what the model is, its data, its held-out metrics) replaces the template card that
  `push_to_hub` writes for a new repository.
- :func:`push_recording`: the recording folder goes up as a dataset repository with
  `huggingface_hub.HfApi.upload_folder`: its layout is the Hub's already (`data/*.parquet`, a dataset card,
  `recording.json`), so `datasets.load_dataset(REPO_ID)` reads it back.

An agent names the tokenizer whose latents it reads (`tokenizer_name`, `tokenizer_hash` in its config, set from
the prepared dataset's schema). The hash is what `DreamerAgent.check_tokenizer` compares; the name is the
tokenizer's folder name (`final`) until the agent is shared, when :func:`push_model` can set it to the Hub id of
the tokenizer pushed beside it (`config_updates`), so that a reader knows where to fetch it.

Both take `token` like `huggingface_hub` (None: the stored login).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# save_pretrained folders name their class in config.json's `architectures`; these are the classes pushed.
MODEL_CLASSES = ("DreamerTokenizer", "DreamerModel", "DreamerAgentModel")


def model_class_of(folder: str | Path) -> type:
    """The `modeling_dreamer` class that saved `folder` (config.json's `architectures`); `ValueError` otherwise."""
    import modeling_dreamer

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder}: no config.json (not a save_pretrained folder)")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    for name in architectures:
        if name in MODEL_CLASSES:
            return getattr(modeling_dreamer, name)
    raise ValueError(f"{folder}: config.json names {architectures}, none of {list(MODEL_CLASSES)}")


def push_model(folder: str | Path, repo_id: str, config_updates: dict[str, Any] | None = None,
               private: bool | None = None, token: str | None = None) -> str:
    """Push the model saved in `folder` to the model repository `repo_id`; returns the repo id the Hub gave.

    config_updates: config fields to set before pushing (the agent's `tokenizer_name`: the tokenizer's Hub id).
    The folder itself is not changed."""
    from training.reporting import push_with_model_card

    model_class = model_class_of(folder)
    model = model_class.from_pretrained(folder)
    for name, value in (config_updates or {}).items():
        if not hasattr(model.config, name):
            raise ValueError(f"push_model: {model_class.__name__}'s config has no field {name!r}")
        setattr(model.config, name, value)
    return push_with_model_card(model, Path(folder), repo_id, private=private, token=token)


def push_recording(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
    """Push a recording folder (`python -m envs.record`) to the dataset repository `repo_id`; returns its id."""
    from huggingface_hub import HfApi

    from envs.recording import METADATA_FILE

    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        raise ValueError(f"{folder}: not a recording of `python -m envs.record` ({METADATA_FILE} is missing)")
    api = HfApi()
    pushed_id = api.create_repo(repo_id, repo_type="dataset", private=private, token=token, exist_ok=True).repo_id
    metadata = json.loads((folder / METADATA_FILE).read_text())
    api.upload_folder(repo_id=pushed_id, folder_path=str(folder), repo_type="dataset", token=token,
                      commit_message=f"Recording of {metadata.get('env_id')} played by {metadata.get('policy')}")
    return pushed_id
