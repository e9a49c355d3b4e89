"""factory-plugin-badam: BAdam, block-coordinate Adam over the decoder layers, through badam.

Registers the optimizer ``badam`` (config section ``badam``). Imports neither torch nor badam at
registration time.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_badam.options import BadamOptions


@hookimpl
def register_optimizers(register):
    register(
        "badam",
        "factory_plugin_badam.optim:BADAM",
        requires=Requires(packages=("badam>=1.4",)),
        options=BadamOptions,
        section="badam",
        description="Adam on one decoder layer at a time, switching layers every N steps (BAdam)",
    )
