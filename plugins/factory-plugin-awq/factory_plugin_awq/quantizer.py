"""The AWQ quantizer: load AWQ checkpoints as transformers does today, guard their kernels for training.

transformers' ``AwqQuantizer`` replaces the linear layers with gptqmodel's AWQ layers (a pure
torch kernel on CPU) and reads the checkpoint's own ``quantization_config``; quantizing a model
to AWQ needs calibration and CUDA packing kernels, so this quantizer only loads.
"""

from __future__ import annotations

from typing import Any

from factory.plugin_api import (
    RunConfig,
    freeze_base,
    require_checkpoint,
    require_quantized_layers,
    save_quantized,
)


class AwqQuantizer:
    name = "awq"

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> None:
        require_checkpoint(
            cfg, "awq", "AWQ", "; give an AWQ checkpoint, or quantize here with quantization=gptq or bnb-4bit"
        )

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        require_quantized_layers(model, cfg, "AWQ")
        return freeze_base(model, pin_kernels=True)

    def export(self, model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig) -> None:
        save_quantized(
            model,
            tokenizer,
            output_dir,
            cfg,
            "AWQ",
            why="AWQ weights are packed integers with activation-aware scales, which a LoRA update cannot be added to",
        )


AWQ = AwqQuantizer()
