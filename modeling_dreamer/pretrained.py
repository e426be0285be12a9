"""What the Dreamer models and the tokenizer share as ``PreTrainedModel``s: checked loading of a local folder and
the choice of the attention implementation. A mixin placed before ``PreTrainedModel`` in their bases."""

from __future__ import annotations

import os

from .attention import AUTO_ATTN_IMPLEMENTATION, DREAMER_ATTENTION_FUNCTIONS, check_attn_implementation
from .validation import check_local_checkpoint


class DreamerPreTrainedMixin:
    """``from_pretrained`` names a broken local checkpoint folder; ``attn_implementation`` None means ``"auto"``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, after checking a local checkpoint folder: a missing
        folder, a missing ``config.json`` or a truncated ``model.safetensors`` raise an ``OSError``
        naming the folder and the file (``validation.check_local_checkpoint``)."""
        if pretrained_model_name_or_path is not None:
            check_local_checkpoint(
                pretrained_model_name_or_path,
                subfolder=kwargs.get("subfolder") or "",
                need_config=kwargs.get("config") is None,
                who=f"{cls.__name__}.from_pretrained",
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' hook that validates ``attn_implementation``: None (not asked for) becomes
        ``"auto"`` (chosen per device at run time, ``attention.resolve_attn_implementation``); the
        project's own names are accepted; an implementation that cannot apply the configured logit
        soft cap is refused here, when the model is built."""
        if requested_attention in (None, AUTO_ATTN_IMPLEMENTATION):
            return AUTO_ATTN_IMPLEMENTATION
        check_attn_implementation(requested_attention, self.config.attn_logit_softcapping)
        if requested_attention in DREAMER_ATTENTION_FUNCTIONS:
            return requested_attention
        return super().get_correct_attn_implementation(requested_attention, is_init_check)
