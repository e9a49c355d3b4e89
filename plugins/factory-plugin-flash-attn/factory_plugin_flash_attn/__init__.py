"""factory-plugin-flash-attn: FlashAttention 2 and 3 as model patches, with padding-free varlen batches.

Registers the patches ``flash-attn`` (FlashAttention 2: CUDA compute capability >= 8.0) and
``flash-attn3`` (FlashAttention 3: Hopper, >= 9.0), both reading the config section
``flash_attn``. Imported when plugins are listed, so it imports neither torch nor flash_attn.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_flash_attn.options import FlashAttnOptions


@hookimpl
def register_patches(register):
    register(
        "flash-attn",
        "factory_plugin_flash_attn.patch:FLASH_ATTN_2",
        requires=Requires(packages=("flash-attn>=2.6",), device="cuda", min_compute_capability=(8, 0)),
        options=FlashAttnOptions,
        section="flash_attn",
        description="FlashAttention 2 (attn_implementation flash_attention_2), varlen batches without padding",
    )
    register(
        "flash-attn3",
        "factory_plugin_flash_attn.patch:FLASH_ATTN_3",
        requires=Requires(packages=("flash-attn-3",), device="cuda", min_compute_capability=(9, 0)),
        options=FlashAttnOptions,
        section="flash_attn",
        description="FlashAttention 3 for Hopper GPUs (attn_implementation flash_attention_3), varlen batches",
    )
