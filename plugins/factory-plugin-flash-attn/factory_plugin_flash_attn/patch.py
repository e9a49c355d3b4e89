"""FlashAttention as a model patch: choose transformers' flash attention and padding-free batches.

transformers carries the FlashAttention integration (``attn_implementation=flash_attention_2``
or ``_3``, varlen calls when a batch brings ``cu_seq_lens``); the patch only selects it and
returns the batch layout it needs as a fact, so this module needs no flash_attn import.
"""

from __future__ import annotations

import os
from typing import Any

from factory.plugin_api import ModelFacts, PluginError, RunConfig

DETERMINISTIC_ENV = "FLASH_ATTENTION_DETERMINISTIC"  # read by transformers' flash attention on every call


class FlashAttentionPatch:
    """``flash-attn`` (version 2) or ``flash-attn3``."""

    def __init__(self, version: int) -> None:
        self.implementation = f"flash_attention_{version}"

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> ModelFacts:
        opts = cfg.options("flash_attn")
        model_kwargs["attn_implementation"] = self.implementation
        if opts.deterministic:
            os.environ[DETERMINISTIC_ENV] = "1"
        # varlen: padding-free batches (one row, cu_seq_lens_q/k, max_length_q/k) that FlashAttention
        # takes as varlen calls; otherwise padded rows, which FlashAttention unpads itself.
        return ModelFacts(attn_implementation=self.implementation, padding_free=opts.varlen)

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        used = getattr(model.config, "_attn_implementation", None)
        if used != self.implementation:
            raise PluginError(
                f"model '{cfg.model}' ({getattr(model.config, 'model_type', '?')}) runs {used} attention instead of "
                f"{self.implementation}; its transformers class does not support FlashAttention, so drop the patch"
            )
        return model


FLASH_ATTN_2 = FlashAttentionPatch(2)
FLASH_ATTN_3 = FlashAttentionPatch(3)
