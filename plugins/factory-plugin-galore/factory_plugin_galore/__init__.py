"""factory-plugin-galore: GaLore optimizers, through galore-torch.

Registers the optimizers ``galore`` (GaLore AdamW, any device), ``galore-layerwise`` (the same,
stepped per weight inside backward) and ``galore-8bit`` (GaLore AdamW8bit, which needs CUDA:
galore-torch calls ``torch.cuda.synchronize`` in it), all reading the config section ``galore``. Imports neither torch nor galore_torch at registration time.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_galore.options import GaloreOptions


@hookimpl
def register_optimizers(register):
    register(
        "galore",
        "factory_plugin_galore.optim:GALORE",
        requires=Requires(packages=("galore-torch>=1.0",)),
        options=GaloreOptions,
        section="galore",
        description="AdamW with low-rank gradient projection (GaLore) on the target modules' weights",
    )
    register(
        "galore-8bit",
        "factory_plugin_galore.optim:GALORE_8BIT",
        requires=Requires(packages=("galore-torch>=1.0", "bitsandbytes"), device="cuda"),
        options=GaloreOptions,
        section="galore",
        description="8-bit AdamW (bitsandbytes) with GaLore projection",
    )
    register(
        "galore-layerwise",
        "factory_plugin_galore.optim:GALORE_LAYERWISE",
        requires=Requires(packages=("galore-torch>=1.0",)),
        options=GaloreOptions,
        section="galore",
        description="GaLore AdamW stepped per weight during backward, so one weight's gradient exists at a time",
    )
