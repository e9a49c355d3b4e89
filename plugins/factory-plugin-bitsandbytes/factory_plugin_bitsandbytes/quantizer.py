"""The bitsandbytes quantizers: transformers' ``BitsAndBytesConfig`` plus the k-bit preparation for training.

transformers quantizes the linear layers while loading; this module adds what a run needs on
top: the CPU guard against bitsandbytes' inference-only weight repacking, the k-bit
preparation (frozen base) before an adapter is attached, and for 4-bit layers a dequantizer
(:mod:`factory_plugin_bitsandbytes.dequantize`) with which an adapter plugin runs the base matmul
itself (the peft plugin's fused QLoRA layers).
"""

from __future__ import annotations

from typing import Any

import bitsandbytes as bnb
from transformers import BitsAndBytesConfig

from factory.plugin_api import PluginError, RunConfig, compute_dtype, freeze_base, save_quantized
from factory_plugin_bitsandbytes.dequantize import attach_dequantizers


def guard_cpu_repacking(model: Any) -> int:
    """Keep every 4-bit layer on the kernel that has a backward; returns how many layers were guarded.

    On a CPU with AVX512-BF16, bitsandbytes repacks a ``Linear4bit`` weight for a faster
    inference kernel the first time the layer runs in eval mode without grad (an evaluation, a
    ``generate``). That kernel has no backward, so from then on no gradient flows through the
    frozen base and every adapter below the last layer stops learning, silently. Turning the
    repacking off before any forward (the quantizer does it right after loading) keeps training
    correct; later it would not help, as unpacking does not restore the weights exactly.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


class BitsAndBytesQuantizer:
    """``bnb-4bit`` or ``bnb-8bit``: quantize while loading, guard and prepare after."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"bnb-{bits}bit"

    def quantization_config(self, cfg: RunConfig) -> BitsAndBytesConfig:
        opts = cfg.options("bnb")
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=opts.int8_threshold)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=opts.quant_type,
            bnb_4bit_use_double_quant=opts.double_quant,
            bnb_4bit_compute_dtype=compute_dtype(opts.compute_dtype, cfg),
        )

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> None:
        model_kwargs["quantization_config"] = self.quantization_config(cfg)

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        loaded = getattr(model, f"is_loaded_in_{self.bits}bit", False)
        if not loaded:
            found = getattr(getattr(model.config, "quantization_config", None), "quant_method", None)
            raise PluginError(
                f"quantization {self.name} did not apply to model '{cfg.model}'"
                + (f", which is already quantized with {found}" if found else "")
                + "; load it without quantization= or give an unquantized model"
            )
        guard_cpu_repacking(model)
        attach_dequantizers(model)
        return freeze_base(model)

    def export(self, model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig) -> None:
        save_quantized(
            model,
            tokenizer,
            output_dir,
            cfg,
            self.name,
            why="the merged weights would be rounded back to the quantization grid, losing most of what the adapter learned",
        )


BNB_4BIT = BitsAndBytesQuantizer(4)
BNB_8BIT = BitsAndBytesQuantizer(8)
