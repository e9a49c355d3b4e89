"""factory-plugin-bitsandbytes: 4-bit (QLoRA) and 8-bit (LLM.int8) quantization through bitsandbytes.

Registers the quantizers ``bnb-4bit`` and ``bnb-8bit``, both reading the config section ``bnb``.
bitsandbytes has a CPU backend since 0.48, so neither needs a GPU. Imported when plugins are
listed, so it imports neither torch nor bitsandbytes.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_bitsandbytes.options import BnbOptions

NEEDS = Requires(packages=("bitsandbytes>=0.48",))


@hookimpl
def register_quantizers(register):
    register(
        "bnb-4bit",
        "factory_plugin_bitsandbytes.quantizer:BNB_4BIT",
        requires=NEEDS,
        options=BnbOptions,
        section="bnb",
        description="4-bit NF4/FP4 weights with optional double quantization (QLoRA)",
    )
    register(
        "bnb-8bit",
        "factory_plugin_bitsandbytes.quantizer:BNB_8BIT",
        requires=NEEDS,
        options=BnbOptions,
        section="bnb",
        description="8-bit LLM.int8 weights with fp16 outlier columns",
    )
