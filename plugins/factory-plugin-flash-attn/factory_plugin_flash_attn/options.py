"""Options of the FlashAttention patches (config section ``flash_attn``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FlashAttnOptions(BaseModel):
    """``flash_attn.*``: padding-free batches and a deterministic backward."""

    model_config = ConfigDict(extra="forbid")

    varlen: bool = Field(
        True, description="train on padding-free batches: one row per batch, example bounds as cu_seq_lens"
    )
    deterministic: bool = Field(False, description="deterministic backward pass (slower; reproducible gradients)")
