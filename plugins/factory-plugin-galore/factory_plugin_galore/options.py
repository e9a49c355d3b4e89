"""Options of the GaLore optimizers (config section ``galore``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import TargetModules


class GaloreOptions(BaseModel):
    """``galore.*``: which weights get low-rank gradient projection, and its shape."""

    model_config = ConfigDict(extra="forbid")

    target: TargetModules = Field(
        "all", description="modules whose 2-D weights are projected (q_proj, mlp.up_proj...), or all linear layers"
    )
    rank: int = Field(16, gt=0, description="rank of the projected gradient")
    update_proj_gap: int = Field(200, gt=0, description="steps between recomputing the projection (an SVD)")
    scale: float = Field(0.25, gt=0, description="multiplier of the projected-back update")
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field(
        "std", description="which side of the gradient is projected"
    )
