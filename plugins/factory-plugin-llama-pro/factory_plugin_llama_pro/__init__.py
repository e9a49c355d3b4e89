"""factory-plugin-llama-pro: LLaMA Pro block expansion as a fine-tuning method (``method: llama-pro``).

Registers the adapter ``llama-pro`` (config section ``llama_pro``). Imports no torch at registration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import hookimpl


class LlamaProOptions(BaseModel):
    """``llama_pro.*``: how many blocks to add."""

    model_config = ConfigDict(extra="forbid")

    expand: int = Field(
        2,
        gt=0,
        description="new decoder blocks, one after every (layers / expand) original ones; must divide the layer count",
    )


@hookimpl
def register_adapters(register):
    register(
        "llama-pro",
        "factory_plugin_llama_pro.expand:LLAMA_PRO",
        options=LlamaProOptions,
        section="llama_pro",
        description="add identity-initialised copies of decoder blocks and train only them (LLaMA Pro)",
    )
