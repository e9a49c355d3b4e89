"""factory-plugin-vllm: the ``vllm`` inference engine (``engine: vllm``), for CUDA GPUs.

Registers the engine ``vllm`` with its options in the config section ``vllm``. It needs vLLM and
a CUDA GPU of compute capability 7.0 or newer; elsewhere ``factory plugins list`` says so and a
run that asks for it stops at config time. This module is imported when plugins are listed, so
it imports neither torch nor vllm.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_vllm.options import VLLMOptions

NEEDS = Requires(packages=("vllm>=0.6",), device="cuda", min_compute_capability=(7, 0))


@hookimpl
def register_engines(register):
    register(
        "vllm",
        "factory_plugin_vllm.engine:VLLMEngine",
        requires=NEEDS,
        options=VLLMOptions,
        section="vllm",
        description="vLLM: paged attention and continuous batching on CUDA GPUs; LoRA adapters served as is",
    )
