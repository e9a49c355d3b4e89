"""factory-plugin-aqlm: AQLM (additive quantization, 2-bit class) checkpoints through transformers.

Registers the quantizer ``aqlm``: it loads AQLM checkpoints for chat, serving and evaluation on
any device; training an adapter on top needs AQLM's CUDA kernels, and a training run without a
GPU is refused before anything is loaded. Imported when plugins are listed: no torch, no aqlm.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl


@hookimpl
def register_quantizers(register):
    register(
        "aqlm",
        "factory_plugin_aqlm.quantizer:AQLM",
        requires=Requires(packages=("aqlm>=1.1",)),
        description="load AQLM checkpoints (forward on CPU; LoRA training on CUDA GPUs only)",
    )
