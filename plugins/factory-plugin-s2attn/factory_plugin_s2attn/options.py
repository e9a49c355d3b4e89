"""Options of the S2-Attn patch (config section ``s2attn``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class S2AttnOptions(BaseModel):
    """``s2attn.*``: the group size as a fraction of the sequence, and the half-group shift."""

    model_config = ConfigDict(extra="forbid")

    group_size_ratio: float = Field(
        0.25, gt=0, le=1, description="tokens per attention group / sequence length (LongLoRA: 1/4)"
    )
    shift: bool = Field(
        True, description="shift the groups of half the heads by half a group, so information flows between groups"
    )
