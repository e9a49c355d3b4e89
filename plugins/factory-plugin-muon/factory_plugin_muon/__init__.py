"""factory-plugin-muon: Muon for hidden weight matrices, AdamW for the rest, through torch.optim.Muon.

Registers the optimizer ``muon`` (config section ``muon``). Imports no torch at registration time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import Requires, TargetModules, hookimpl


class MuonOptions(BaseModel):
    """``muon.*``: which weights Muon steps, its momentum and orthogonalisation, and AdamW's betas for the rest."""

    model_config = ConfigDict(extra="forbid")

    target: TargetModules = Field(
        "all", description="linear modules whose 2-D weights Muon steps (default: every one but the output head)"
    )
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon's momentum")
    nesterov: bool = Field(True, description="Nesterov momentum")
    ns_steps: int = Field(5, gt=0, lt=100, description="Newton-Schulz iterations that orthogonalise the update")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw",
        description="scale Muon's step to AdamW's RMS (0.2 sqrt(max(A,B)), so one learning_rate fits both) or Keller Jordan's sqrt(max(1,A/B))",
    )
    adamw_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's betas for the other parameters")
    adamw_eps: float = Field(1e-8, gt=0, description="AdamW's epsilon for the other parameters")


@hookimpl
def register_optimizers(register):
    register(
        "muon",
        "factory_plugin_muon.optim:MUON",
        requires=Requires(packages=("torch>=2.9",)),
        options=MuonOptions,
        section="muon",
        description="Muon (Newton-Schulz orthogonalised momentum) on hidden weight matrices, AdamW on the rest",
    )
