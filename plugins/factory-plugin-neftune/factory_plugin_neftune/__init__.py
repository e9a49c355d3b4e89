"""factory-plugin-neftune: NEFTune as a training callback (``callbacks: [neftune]``).

Registers the callback ``neftune`` (config section ``neftune``). Imports no torch at registration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import hookimpl


class NeftuneOptions(BaseModel):
    """``neftune.*``: the noise scale alpha of the NEFTune paper."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        5.0, gt=0, description="noise scale: uniform noise of magnitude alpha / sqrt(L * d) (paper: 5)"
    )


@hookimpl
def register_callbacks(register):
    register(
        "neftune",
        "factory_plugin_neftune.noise:NEFTUNE",
        options=NeftuneOptions,
        section="neftune",
        description="uniform noise on the input embeddings while training, scaled by alpha / sqrt(length * dim) (NEFTune)",
    )
