"""Options of the APOLLO optimizers (config section ``apollo``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import TargetModules


class ApolloOptions(BaseModel):
    """``apollo.*``: which weights get APOLLO's projected scaling, and the projection's shape."""

    model_config = ConfigDict(extra="forbid")

    target: TargetModules = Field(
        "all", description="modules whose 2-D weights APOLLO scales (q_proj, mlp.up_proj...), or all linear layers"
    )
    rank: int = Field(16, gt=0, description="rank of the projected gradient (apollo-mini: always 1)")
    update_proj_gap: int = Field(200, gt=0, description="steps between drawing a new projection")
    scale: float | None = Field(
        None,
        gt=0,
        description="multiplier of the scaled gradient (its square root is applied); default 32, apollo-mini 128",
    )
    proj: Literal["random", "svd"] = Field("random", description="random projection (APOLLO) or an SVD of the gradient")
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field(
        "std", description="which side of the gradient is projected"
    )
    scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="one scaling factor per channel, or one per tensor (apollo-mini: always tensor)"
    )
    scale_front: bool = Field(False, description="apply the scale before the norm-growth limiter instead of after it")
