"""factory-plugin-apollo: APOLLO and APOLLO-Mini, through apollo-torch.

Registers the optimizers ``apollo``, ``apollo-mini`` (rank 1, one scaling factor per tensor) and
``apollo-layerwise`` (each weight stepped during backward), all reading the config section ``apollo``. Imports neither torch nor apollo_torch at registration.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_apollo.options import ApolloOptions

NEEDS = Requires(packages=("apollo-torch>=1.0.3",))


@hookimpl
def register_optimizers(register):
    register(
        "apollo",
        "factory_plugin_apollo.optim:APOLLO",
        requires=NEEDS,
        options=ApolloOptions,
        section="apollo",
        description="AdamW whose per-channel learning-rate scaling is estimated in a random low-rank space (APOLLO)",
    )
    register(
        "apollo-mini",
        "factory_plugin_apollo.optim:APOLLO_MINI",
        requires=NEEDS,
        options=ApolloOptions,
        section="apollo",
        description="APOLLO with a rank-1 projection and one scaling factor per tensor (APOLLO-Mini)",
    )
    register(
        "apollo-layerwise",
        "factory_plugin_apollo.optim:APOLLO_LAYERWISE",
        requires=NEEDS,
        options=ApolloOptions,
        section="apollo",
        description="APOLLO with each weight stepped as soon as backward reaches it, so one gradient lives at a time",
    )
