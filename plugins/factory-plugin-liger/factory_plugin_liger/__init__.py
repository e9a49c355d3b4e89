"""factory-plugin-liger: Liger kernels (Triton) patched into supported transformers models.

Registers the patch ``liger`` (config section ``liger``); it needs liger-kernel and a CUDA GPU
of compute capability 7.0 or newer (Triton). Imported when plugins are listed, so it imports
neither torch nor liger_kernel.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_liger.options import LigerOptions


@hookimpl
def register_patches(register):
    register(
        "liger",
        "factory_plugin_liger.patch:LIGER",
        requires=Requires(packages=("liger-kernel>=0.5",), device="cuda", min_compute_capability=(7, 0)),
        options=LigerOptions,
        section="liger",
        description="fused RMSNorm, RoPE, SwiGLU/GeGLU and fused linear cross-entropy (Liger Triton kernels)",
    )
