"""factory-plugin-s2attn: LongLoRA's shifted sparse attention as a model patch (``patches: [s2attn]``).

Registers the patch ``s2attn`` (config section ``s2attn``). Pure PyTorch through transformers'
attention interface, so it runs anywhere. Imported when plugins are listed: no torch here.
"""

from __future__ import annotations

from factory.plugin_api import hookimpl
from factory_plugin_s2attn.options import S2AttnOptions


@hookimpl
def register_patches(register):
    register(
        "s2attn",
        "factory_plugin_s2attn.patch:S2ATTN",
        options=S2AttnOptions,
        section="s2attn",
        description="shifted sparse attention (LongLoRA) while training; full attention at inference",
    )
