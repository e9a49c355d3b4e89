"""Options of the Liger patch (config section ``liger``): which kernels to swap in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LigerOptions(BaseModel):
    """``liger.*``: one switch per kernel family."""

    model_config = ConfigDict(extra="forbid")

    rope: bool = Field(True, description="fused rotary position embedding")
    rms_norm: bool = Field(True, description="fused RMSNorm")
    swiglu: bool = Field(True, description="fused gated MLP (SwiGLU; GeGLU for Gemma models)")
    fused_linear_cross_entropy: bool = Field(
        True, description="output head and cross-entropy in chunks, never materializing the full logits (training)"
    )
    cross_entropy: bool = Field(False, description="fused cross-entropy on materialized logits")

    @model_validator(mode="after")
    def _one_loss(self) -> LigerOptions:
        if self.fused_linear_cross_entropy and self.cross_entropy:
            raise ValueError(
                "liger.cross_entropy and liger.fused_linear_cross_entropy both replace the loss; turn one of them off"
            )
        return self
