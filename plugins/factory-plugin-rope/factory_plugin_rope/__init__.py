"""factory-plugin-rope: RoPE scaling as a model patch (``patches: [rope-scaling]``).

Registers the patch ``rope-scaling`` (config section ``rope_scaling``). Imports no torch at registration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import Requires, hookimpl


class RopeScalingOptions(BaseModel):
    """``rope_scaling.*``: which RoPE scaling, by how much, and the type-specific knobs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["linear", "dynamic", "yarn", "llama3"] = Field("linear", description="the scaling method")
    factor: float | None = Field(
        None, gt=1, description="context multiplier; default ceil(cutoff_len / the model's max_position_embeddings)"
    )
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="the context the model was trained for (default: its max_position_embeddings)"
    )
    beta_fast: float | None = Field(
        None, gt=0, description="yarn: rotations where extrapolation ends (transformers: 32)"
    )
    beta_slow: float | None = Field(
        None, gt=0, description="yarn: rotations where interpolation starts (transformers: 1)"
    )
    attention_factor: float | None = Field(
        None, gt=0, description="yarn: attention temperature (default 0.1 ln(factor) + 1)"
    )
    low_freq_factor: float = Field(1.0, gt=0, description="llama3: wavelengths above original / this are interpolated")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3: wavelengths below original / this are kept")


@hookimpl
def register_patches(register):
    register(
        "rope-scaling",
        "factory_plugin_rope.patch:ROPE_SCALING",
        requires=Requires(packages=("transformers>=5.0",)),
        options=RopeScalingOptions,
        section="rope_scaling",
        description="scale rotary position embeddings (linear, dynamic NTK, YaRN, Llama 3) for contexts beyond the model's",
    )
