"""factory-plugin-adam-mini: Adam-mini, through the adam-mini package.

Registers the optimizer ``adam-mini`` (config section ``adam_mini``). Imports neither torch nor
adam_mini at registration time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import Requires, hookimpl


class AdamMiniOptions(BaseModel):
    """``adam_mini.*``: Adam's betas and epsilon (the blocks come from the model's shape)."""

    model_config = ConfigDict(extra="forbid")

    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's moment decay rates")
    eps: float = Field(1e-8, gt=0, description="added to the square root of the second moment")


@hookimpl
def register_optimizers(register):
    register(
        "adam-mini",
        "factory_plugin_adam_mini.optim:ADAM_MINI",
        requires=Requires(packages=("adam-mini>=1.1.1",)),
        options=AdamMiniOptions,
        section="adam_mini",
        description="Adam with one second-moment value per head / neuron / block instead of per weight (Adam-mini)",
    )
