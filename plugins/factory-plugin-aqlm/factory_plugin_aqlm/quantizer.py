"""The AQLM quantizer: transformers' AQLM integration loads the checkpoint; this adds CPU guards and refusals.

Quantizing to AQLM is a long GPU calibration done with the AQLM project's own scripts, so this
quantizer only loads checkpoints. On CPU, aqlm 1.1.7's kernel (numba) reorders the codes on the
first forward and its backward then fails, so a CPU training run is refused up front. The same
kernel only takes fp32, and it sums into shared outputs from parallel threads: with more than
one numba thread about one call in eight returns wrong numbers, silently. Both are guarded here.
"""

from __future__ import annotations

from typing import Any

from factory.plugin_api import (
    PluginError,
    RunConfig,
    freeze_base,
    hardware,
    is_quantized_linear,
    require_checkpoint,
    require_quantized_layers,
    save_quantized,
)


def _single_numba_thread(_module: Any, _args: Any) -> None:
    """Run aqlm's CPU kernel on one numba thread: in parallel its threads race on the same outputs.

    ``numba.set_num_threads`` holds per calling thread, so it is set on every forward (a server
    may run the model from another thread than the one that loaded it).
    """
    import numba

    numba.set_num_threads(1)


class AqlmQuantizer:
    name = "aqlm"

    def check_trainable(self, cfg: RunConfig) -> None:
        if not hardware.cuda_devices():
            raise PluginError(
                f"quantization aqlm cannot train on this machine because AQLM's CPU kernels have no working backward "
                f"pass; use '{cfg.model}' for chat, serve or eval here, or train on a CUDA GPU"
            )

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> None:
        if not hardware.cuda_devices():
            import torch

            model_kwargs["dtype"] = torch.float32  # the CPU kernel asserts fp32 inputs and codebooks
        require_checkpoint(
            cfg,
            "aqlm",
            "AQLM",
            " (made with the AQLM project's GPU calibration); give an AQLM checkpoint, "
            "or quantize here with gptq or bnb-4bit",
        )

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        require_quantized_layers(model, cfg, "AQLM")
        freeze_base(model)
        if not hardware.cuda_devices():
            for module in model.modules():
                if is_quantized_linear(module):
                    module.register_forward_pre_hook(_single_numba_thread)
        return model

    def export(self, model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig) -> None:
        save_quantized(
            model,
            tokenizer,
            output_dir,
            cfg,
            "AQLM",
            why="AQLM weights are sums of codebook vectors, which a LoRA update cannot be added to",
        )


AQLM = AqlmQuantizer()
