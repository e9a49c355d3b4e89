"""The GPTQ quantizer: transformers' ``GPTQConfig`` (optimum + gptqmodel underneath), plus the training guard.

auto-gptq, the backend the design card names, is archived and does not import with
transformers 5 (see the README); gptqmodel reads the same checkpoints and has CPU kernels.
"""

from __future__ import annotations

from typing import Any

from transformers import GPTQConfig

from factory.plugin_api import (
    PluginError,
    RunConfig,
    calibration_texts,
    checkpoint_quantization,
    freeze_base,
    save_quantized,
)


class GptqQuantizer:
    """Load a GPTQ checkpoint as it is, or quantize an unquantized model while loading."""

    name = "gptq"

    def quantization_config(self, cfg: RunConfig) -> GPTQConfig:
        """The config that makes transformers quantize the model, calibrated on a factory data set."""
        opts = cfg.options("gptq")
        return GPTQConfig(
            bits=opts.bits,
            group_size=opts.group_size,
            desc_act=opts.desc_act,
            sym=opts.sym,
            damp_percent=opts.damp_percent,
            dataset=calibration_texts(cfg, opts.calibration_dataset, opts.calibration_samples),
        )

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> None:
        found = checkpoint_quantization(cfg)
        if found == "gptq":
            return  # the checkpoint's own quantization_config tells transformers how to load it
        if found is not None:
            raise PluginError(
                f"model '{cfg.model}' is already quantized with {found}; GPTQ quantizes full-precision models, "
                f"so drop quantization=gptq or give an unquantized model"
            )
        model_kwargs["quantization_config"] = self.quantization_config(cfg)

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        return freeze_base(model, pin_kernels=True)

    def export(self, model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig) -> None:
        save_quantized(
            model,
            tokenizer,
            output_dir,
            cfg,
            "GPTQ",
            why="GPTQ weights are packed integers calibrated as a whole, which a LoRA update cannot be added to",
        )


GPTQ = GptqQuantizer()
