"""DreamerV4 world models as Hugging Face ``PreTrainedModel``s (see docs/model.md)."""

from transformers import AutoConfig, AutoModel

from .agent import DreamerAgent
from .cache import DreamerCache
from .configuration_dreamer import DreamerConfig
from .modeling_dreamer import (
    DreamerAgentModel,
    DreamerAgentOutput,
    DreamerModel,
    DreamerModelOutput,
    ImaginationOutput,
    shortcut_sample,
)

AutoConfig.register(DreamerConfig.model_type, DreamerConfig)
# A tuple of classes: transformers' auto factory then picks the one named in the saved config's
# `architectures`, so AutoModel gives back the class a folder was saved from (DreamerModel when a
# config names neither, e.g. `AutoModel.from_config(DreamerConfig())`).
AutoModel.register(DreamerConfig, (DreamerModel, DreamerAgentModel))
# save_pretrained then copies the modeling files next to the weights and writes config.auto_map, so
# `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without this package installed.
# A saved agent model maps AutoModel to DreamerAgentModel, a saved dynamics model to DreamerModel.
DreamerConfig.register_for_auto_class()
DreamerModel.register_for_auto_class("AutoModel")
DreamerAgentModel.register_for_auto_class("AutoModel")

__all__ = [
    "DreamerConfig",
    "DreamerModel",
    "DreamerAgentModel",
    "DreamerModelOutput",
    "DreamerAgentOutput",
    "DreamerCache",
    "DreamerAgent",
    "ImaginationOutput",
    "shortcut_sample",
]

# The causal tokenizer (phase 0, docs/tokenizer.md): frames <-> latents, registered like the models above.
from .configuration_tokenizer import DreamerTokenizerConfig  # noqa: E402
from .modeling_tokenizer import DreamerTokenizer, DreamerTokenizerCache, DreamerTokenizerOutput  # noqa: E402

AutoConfig.register(DreamerTokenizerConfig.model_type, DreamerTokenizerConfig)
AutoModel.register(DreamerTokenizerConfig, DreamerTokenizer)
DreamerTokenizerConfig.register_for_auto_class()
DreamerTokenizer.register_for_auto_class("AutoModel")
__all__ += ["DreamerTokenizerConfig", "DreamerTokenizer", "DreamerTokenizerCache", "DreamerTokenizerOutput"]
