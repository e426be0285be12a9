"""Hugging Face behaviour: save/load, growing a dynamics checkpoint into an agent, auto classes,
renamed config fields, clear errors for broken checkpoint folders and Hub-style remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from conftest import SMALL_MODEL_FIELDS
from model_helpers import agent_outputs, make_inputs

from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel

pytestmark = pytest.mark.usefixtures("one_thread")

AGENT_KEY_PREFIXES = ("agent_tokens.", "agent_norm.", "reward_head.", "policy_head.", "value_head.")


def fresh(cls, **overrides):
    torch.manual_seed(0)
    return cls(DreamerConfig(**{**SMALL_MODEL_FIELDS, **overrides})).eval()


@torch.no_grad()
def test_save_and_reload_gives_bitwise_identical_outputs(tmp_path):
    model = fresh(DreamerAgentModel)
    with torch.no_grad():  # make the zero-initialised outputs informative
        model.reward_head.out.weight.normal_()
        model.value_head.out.weight.normal_()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    loaded = DreamerAgentModel.from_pretrained(tmp_path).eval()
    inputs = {**make_inputs(), "independent_frames": torch.tensor([False, True])}
    expected, got = agent_outputs(model(**inputs)), agent_outputs(loaded(**inputs))
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_dynamics_checkpoint_grows_into_agent_with_exactly_the_agent_keys_missing(tmp_path):
    backbone = fresh(DreamerModel)
    backbone.save_pretrained(tmp_path)
    agent, info = DreamerAgentModel.from_pretrained(tmp_path, output_loading_info=True)
    expected_missing = {k for k in agent.state_dict() if k.startswith(AGENT_KEY_PREFIXES)}
    assert set(info["missing_keys"]) == expected_missing and len(expected_missing) > 0
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == {k.removeprefix("dreamer.") for k in agent.state_dict() if k.startswith("dreamer.")}
    for key, value in saved.items():
        assert torch.equal(agent.state_dict()[f"dreamer.{key}"], value), key
    # The new modules are initialised by _init_weights, not left as uninitialised memory.
    assert torch.count_nonzero(agent.reward_head.out.weight) == 0
    assert 0.005 < agent.agent_tokens.slots.std() < 0.05 and agent.agent_tokens.slots.abs().max() < 1


def test_from_backbone_checks_the_report_and_takes_agent_overrides(tmp_path):
    fresh(DreamerModel).save_pretrained(tmp_path)
    agent = DreamerAgentModel.from_backbone(tmp_path, num_tasks=5, bins_low=-3.0, bins_high=2.0, mtp_length=4)
    assert agent.agent_tokens.task_embed.weight.shape[0] == 5
    assert agent.reward_bins()[0] == -3.0 and agent.reward_bins()[-1] == 2.0
    out = agent(**make_inputs(), task_ids=torch.tensor([4, 1]))
    assert out.reward_logits.shape == (2, 6, 5, 11)
    # A backbone field changed by mistake is reported, not silently re-initialised.
    other_space = {"move": {"type": "categorical", "n": 7}, "jump": {"type": "binary"}}
    with pytest.raises(RuntimeError, match="mismatched"):  # transformers itself refuses a shape change
        DreamerAgentModel.from_backbone(tmp_path, action_space=other_space)
    with pytest.raises(ValueError, match="mismatched shapes"):  # ... and so do we if told to ignore it
        DreamerAgentModel.from_backbone(tmp_path, action_space=other_space, ignore_mismatched_sizes=True)
    with pytest.raises(ValueError, match="missing weights.*dash"):
        DreamerAgentModel.from_backbone(tmp_path, action_space={**SMALL_MODEL_FIELDS["action_space"], "dash": {"type": "binary"}})


def test_agent_checkpoint_loads_back_into_a_dynamics_model(tmp_path):
    agent = fresh(DreamerAgentModel)
    agent.save_pretrained(tmp_path)
    backbone, info = DreamerModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    inputs = make_inputs()
    assert torch.equal(backbone(**inputs).latent_pred, agent.dreamer(**inputs).latent_pred)


@torch.no_grad()
def test_auto_model_gives_back_the_saved_class_with_every_weight(tmp_path):
    """With the package imported, AutoModel follows the folder's `architectures`: an agent folder
    gives a DreamerAgentModel with every weight loaded (none missing or unexpected)."""
    inputs = make_inputs()
    for cls in (DreamerAgentModel, DreamerModel):
        folder = tmp_path / cls.__name__
        model = fresh(cls)
        if cls is DreamerAgentModel:
            model.reward_head.out.weight.normal_()
        model.save_pretrained(folder)
        assert isinstance(AutoConfig.from_pretrained(folder), DreamerConfig)
        loaded, info = AutoModel.from_pretrained(folder, output_loading_info=True)
        assert type(loaded) is cls
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert set(loaded.state_dict()) == set(model.state_dict())
        expected, got = model(**inputs), loaded.eval()(**inputs)
        assert torch.equal(got.latent_pred, expected.latent_pred)
        if cls is DreamerAgentModel:
            assert torch.equal(got.reward_logits, expected.reward_logits)
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [cls.__name__]
        assert config["auto_map"] == {"AutoConfig": "configuration_dreamer.DreamerConfig", "AutoModel": f"modeling_dreamer.{cls.__name__}"}
    assert type(AutoModel.from_config(DreamerConfig(**SMALL_MODEL_FIELDS))) is DreamerModel  # no architectures: the backbone


def test_config_written_with_the_old_field_names_still_loads(tmp_path):
    model = fresh(DreamerAgentModel, num_agent_tokens=3, attn_logit_softcapping=20.0)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_agent_tokens"] == 3 and config["attn_logit_softcapping"] == 20.0
    config["agent_tokens_per_frame"] = config.pop("num_agent_tokens")
    config["attn_logit_softcap"] = config.pop("attn_logit_softcapping")
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, info = DreamerAgentModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert (loaded.config.num_agent_tokens, loaded.config.attn_logit_softcapping) == (3, 20.0)
    assert loaded.config.agent_tokens_per_frame == 3 and loaded.config.attn_logit_softcap == 20.0  # old names read the new fields
    assert "agent_tokens_per_frame" not in loaded.config.to_dict() and "attn_logit_softcap" not in loaded.config.to_dict()
    assert torch.equal(loaded.agent_tokens.slots, model.agent_tokens.slots)


def test_from_pretrained_of_a_missing_folder_names_it(tmp_path):
    missing = tmp_path / "runs" / "final"
    with pytest.raises(FileNotFoundError, match=f"checkpoint folder {missing} does not exist"):
        DreamerAgentModel.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DreamerModel.from_pretrained(str(missing))


def test_from_pretrained_of_a_folder_without_config_names_folder_and_file(tmp_path):
    fresh(DreamerModel).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(OSError, match=f"checkpoint folder {tmp_path} has no config.json"):
        DreamerModel.from_pretrained(tmp_path)


def test_from_pretrained_of_a_truncated_safetensors_names_the_file(tmp_path):
    fresh(DreamerModel).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=f"{weights} in checkpoint folder {tmp_path} is truncated"):
        DreamerModel.from_pretrained(tmp_path)
    weights.write_bytes(data[:5])  # not even a header
    with pytest.raises(OSError, match=f"{weights} .* not a readable safetensors file"):
        DreamerModel.from_pretrained(tmp_path)


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    import importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_dreamer" or name.startswith("modeling_dreamer."):
                raise ImportError("modeling_dreamer is blocked in this process")

    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel

    results = {}
    for folder in sys.argv[1:]:
        model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        inputs = torch.load(folder + "/inputs.pt")
        with torch.no_grad():
            out = model.eval()(**inputs)
        results[folder] = {"cls": type(model).__name__, "latent_pred": out.latent_pred,
                           "reward_logits": getattr(out, "reward_logits", None)}
    torch.save(results, sys.argv[1] + "/remote_out.pt")
    """
)

# What a shared model must not ship: loss functions and the (all-reducing) loss normaliser. Every
# shipped file is checked, so a model file added later is covered too.
TRAINING_CODE_MARKERS = ("RunningRMS", "LossNormalizer", "all_reduce", "torch.distributed", "mtp_targets", "mtp_reward", "mtp_policy", "shortcut_forcing",
                         "bootstrap_target", "soft_cross_entropy", "twohot_loss", "from .objectives", "import objectives")
MODEL_FILES = {"configuration_dreamer.py", "modeling_dreamer.py", "action_space.py", "attention.py", "distributions.py",
               "heads.py", "layers.py", "validation.py"}


@pytest.mark.slow  # a fresh interpreter importing transformers takes ~6 s here
def test_remote_code_loads_offline_without_the_package_and_ships_no_training_code(tmp_path):
    models, folders = {}, []
    inputs = make_inputs()
    for cls in (DreamerAgentModel, DreamerModel):
        model = fresh(cls)
        if cls is DreamerAgentModel:
            with torch.no_grad():
                model.reward_head.out.weight.normal_()
        folder = tmp_path / cls.__name__
        model.save_pretrained(folder)
        torch.save(inputs, folder / "inputs.pt")
        shipped = {p.name for p in folder.glob("*.py")}
        assert MODEL_FILES <= shipped and "objectives.py" not in shipped, shipped
        for name in shipped:
            text = (folder / name).read_text()
            found = [marker for marker in TRAINING_CODE_MARKERS if marker in text]
            assert not found, (name, found)
        models[str(folder)] = model
        folders.append(str(folder))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = tmp_path / "remote_load.py"
    script.write_text(REMOTE_LOAD)
    result = subprocess.run(
        [sys.executable, str(script), *folders], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "DreamerAgentModel" / "remote_out.pt")
    for folder, model in models.items():
        assert remote[folder]["cls"] == type(model).__name__
        with torch.no_grad():
            expected = model(**inputs)
        assert torch.equal(remote[folder]["latent_pred"], expected.latent_pred)
        if isinstance(model, DreamerAgentModel):
            assert torch.equal(remote[folder]["reward_logits"], expected.reward_logits)
