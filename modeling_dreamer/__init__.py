"""DreamerV4 world models as Hugging Face ``PreTrainedModel``s (see docs/model.md).

``import modeling_dreamer`` is light: the model classes (and torch and transformers behind them) are imported
on first use of a name below, e.g. ``from modeling_dreamer import DreamerAgent``, so that the parts without
torch (``modeling_dreamer.action_space``, ``modeling_dreamer.symlog``) serve the data layer in well under a
second. Using any model name also registers the configs and models with transformers' Auto classes (and for
remote code), as a package ``__init__`` usually does at import.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it.
_LAZY: dict[str, str] = {
    "DreamerConfig": "configuration_dreamer",
    "DreamerModel": "modeling_dreamer",
    "DreamerAgentModel": "modeling_dreamer",
    "DreamerModelOutput": "modeling_dreamer",
    "DreamerAgentOutput": "modeling_dreamer",
    "ImaginationOutput": "modeling_dreamer",
    "shortcut_sample": "modeling_dreamer",
    "DreamerCache": "cache",
    "DreamerAgent": "agent",
    "DreamerTokenizerConfig": "configuration_tokenizer",
    "DreamerTokenizer": "modeling_tokenizer",
    "DreamerTokenizerCache": "modeling_tokenizer",
    "DreamerTokenizerOutput": "modeling_tokenizer",
}

__all__ = list(_LAZY)

_registered = False


def _register_auto_classes() -> None:
    """Register the configs and models with transformers' Auto classes, once."""
    global _registered
    if _registered:
        return
    _registered = True
    from transformers import AutoConfig, AutoModel

    from .configuration_dreamer import DreamerConfig
    from .configuration_tokenizer import DreamerTokenizerConfig
    from .modeling_dreamer import DreamerAgentModel, DreamerModel
    from .modeling_tokenizer import DreamerTokenizer

    AutoConfig.register(DreamerConfig.model_type, DreamerConfig, exist_ok=True)
    # A tuple of classes: transformers' auto factory then picks the one named in the saved config's
    # `architectures`, so AutoModel gives back the class a folder was saved from (DreamerModel when a
    # config names neither, e.g. `AutoModel.from_config(DreamerConfig())`).
    AutoModel.register(DreamerConfig, (DreamerModel, DreamerAgentModel), exist_ok=True)
    # save_pretrained then copies the modeling files next to the weights and writes config.auto_map, so
    # `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without this package installed.
    # A saved agent model maps AutoModel to DreamerAgentModel, a saved dynamics model to DreamerModel.
    DreamerConfig.register_for_auto_class()
    DreamerModel.register_for_auto_class("AutoModel")
    DreamerAgentModel.register_for_auto_class("AutoModel")
    # The causal tokenizer (phase 0, docs/tokenizer.md): frames <-> latents, registered likewise.
    AutoConfig.register(DreamerTokenizerConfig.model_type, DreamerTokenizerConfig, exist_ok=True)
    AutoModel.register(DreamerTokenizerConfig, DreamerTokenizer, exist_ok=True)
    DreamerTokenizerConfig.register_for_auto_class()
    DreamerTokenizer.register_for_auto_class("AutoModel")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'modeling_dreamer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    _register_auto_classes()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
