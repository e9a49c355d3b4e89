"""factory-plugin-awq: AWQ checkpoints through transformers' AWQ integration (gptqmodel kernels).

Registers the quantizer ``awq``: it loads AWQ-quantized checkpoints (CPU kernels included) and
keeps them trainable under LoRA; it does not quantize (see the README for why autoawq is out).
Imported when plugins are listed, so it imports neither torch nor gptqmodel.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl


@hookimpl
def register_quantizers(register):
    register(
        "awq",
        "factory_plugin_awq.quantizer:AWQ",
        requires=Requires(packages=("gptqmodel>=7.0,<7.7", "optimum>=1.24")),
        description="load AWQ 4-bit checkpoints (GEMM/GEMV formats) and train LoRA on top",
    )
