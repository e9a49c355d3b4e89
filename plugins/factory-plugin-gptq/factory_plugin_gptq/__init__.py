"""factory-plugin-gptq: GPTQ quantization through gptqmodel (the maintained successor of auto-gptq).

Registers the quantizer ``gptq`` (config section ``gptq``): with a GPTQ checkpoint it loads the
packed weights; with an unquantized model it quantizes while loading, calibrated on a factory
data set. Imported when plugins are listed, so it imports neither torch nor gptqmodel.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_gptq.options import GptqOptions

NEEDS = Requires(packages=("gptqmodel>=7.0,<7.7", "optimum>=1.24"))


@hookimpl
def register_quantizers(register):
    register(
        "gptq",
        "factory_plugin_gptq.quantizer:GPTQ",
        requires=NEEDS,
        options=GptqOptions,
        section="gptq",
        description="GPTQ 2/3/4/8-bit weights: load checkpoints or quantize with calibration data; LoRA on top",
    )
