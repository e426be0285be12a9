"""Hugging Face behaviour: save/load, growing a dynamics checkpoint into an agent, auto classes and
Hub-style remote code."""

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

from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel
from test_model import agent_outputs, make_inputs, one_thread, small_config  # noqa: F401 (fixture)

AGENT_KEY_PREFIXES = ("agent_tokens.", "agent_norm.", "reward_head.", "policy_head.", "value_head.")


def fresh(cls, **overrides):
    torch.manual_seed(0)
    return cls(small_config(**overrides)).eval()


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
    with pytest.raises(ValueError, match="missing backbone weights"):
        DreamerAgentModel.from_backbone(tmp_path, action_space={**small_config().action_space, "dash": {"type": "binary"}})


def test_agent_checkpoint_loads_back_into_a_dynamics_model(tmp_path):
    agent = fresh(DreamerAgentModel)
    agent.save_pretrained(tmp_path)
    backbone, info = DreamerModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    inputs = make_inputs()
    assert torch.equal(backbone(**inputs).latent_pred, agent.dreamer(**inputs).latent_pred)


def test_auto_classes_are_registered(tmp_path):
    fresh(DreamerModel).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DreamerConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is DreamerModel
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dreamer.DreamerConfig",
        "AutoModel": "modeling_dreamer.DreamerModel",
    }
    for name in ("configuration_dreamer.py", "modeling_dreamer.py", "layers.py", "heads.py", "objectives.py"):
        assert (tmp_path / name).exists(), name


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

    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(folder + "/inputs.pt")
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"cls": type(model).__name__, "latent_pred": out.latent_pred,
                "reward_logits": out.reward_logits}, folder + "/remote_out.pt")
    """
)


@pytest.mark.slow  # a fresh interpreter importing transformers takes ~6 s here
def test_remote_code_loads_offline_without_the_package(tmp_path):
    model = fresh(DreamerAgentModel)
    with torch.no_grad():
        model.reward_head.out.weight.normal_()
    model.save_pretrained(tmp_path)
    inputs = make_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = tmp_path / "remote_load.py"
    script.write_text(REMOTE_LOAD)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "remote_out.pt")
    assert remote["cls"] == "DreamerAgentModel"
    with torch.no_grad():
        expected = model(**inputs)
    assert torch.equal(remote["latent_pred"], expected.latent_pred)
    assert torch.equal(remote["reward_logits"], expected.reward_logits)
