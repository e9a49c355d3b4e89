"""The Liger patch: map factory's options to liger-kernel's per-model ``apply_liger_kernel_to_*`` call.

liger-kernel does the patching (it swaps the norm and MLP modules' forwards, the rotary
function and the causal LM's loss); this module decides, before anything is loaded, whether the
model type has Liger kernels at all, and which call and keywords the options become.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from factory.plugin_api import ModelFacts, PluginError, RunConfig, checkpoint_config


@dataclass(frozen=True)
class Family:
    """How liger-kernel patches one model type."""

    function: str  # in liger_kernel.transformers
    mlp_keyword: str = "swiglu"  # Gemma's MLP is GeGLU, under its own keyword


FAMILIES: dict[str, Family] = {
    "llama": Family("apply_liger_kernel_to_llama"),
    "mistral": Family("apply_liger_kernel_to_mistral"),
    "mixtral": Family("apply_liger_kernel_to_mixtral"),
    "qwen2": Family("apply_liger_kernel_to_qwen2"),
    "qwen3": Family("apply_liger_kernel_to_qwen3"),
    "phi3": Family("apply_liger_kernel_to_phi3"),
    "gemma": Family("apply_liger_kernel_to_gemma", mlp_keyword="geglu"),
    "gemma2": Family("apply_liger_kernel_to_gemma2", mlp_keyword="geglu"),
}

# Which modules each kernel family replaces, by the suffix of their class name.
MODULE_SUFFIXES: dict[str, str] = {"rms_norm": "RMSNorm", "swiglu": "MLP", "rope": "Attention"}


def family(model_type: str, model: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise PluginError(
            f"model '{model}' is of type '{model_type}', for which Liger has no kernels here; drop the liger patch "
            f"or use a model of type {', '.join(sorted(FAMILIES))}"
        ) from None


def liger_call(model_type: str, opts: Any, model: str = "?") -> tuple[str, dict[str, bool]]:
    """The liger_kernel.transformers function and its keywords for ``model_type`` and the ``liger`` options."""
    fam = family(model_type, model)
    return fam.function, {
        "rope": opts.rope,
        "rms_norm": opts.rms_norm,
        fam.mlp_keyword: opts.swiglu,
        "cross_entropy": opts.cross_entropy,
        "fused_linear_cross_entropy": opts.fused_linear_cross_entropy,
    }


def patched_modules(model: Any, opts: Any) -> dict[str, list[str]]:
    """Per enabled kernel, the qualified names of the modules of ``model`` it replaces (the loss: the root)."""
    out: dict[str, list[str]] = {}
    for kernel, suffix in MODULE_SUFFIXES.items():
        if getattr(opts, kernel):
            out[kernel] = [name for name, module in model.named_modules() if type(module).__name__.endswith(suffix)]
    for kernel in ("fused_linear_cross_entropy", "cross_entropy"):
        if getattr(opts, kernel):
            out[kernel] = [f"{type(model).__name__}.forward"]
    return out


class LigerPatch:
    """Refuse an unsupported model type before loading; apply the kernels to the loaded model."""

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> ModelFacts:
        model_type = checkpoint_config(cfg).get("model_type")
        if model_type is not None:
            family(model_type, cfg.model)
        opts = cfg.options("liger")
        # What Liger takes over, so factory's own fused forwards and chunked loss step aside for it.
        taken = {
            "rms_norm": opts.rms_norm,
            "mlp": opts.swiglu,
            "rope": opts.rope,
            "loss": opts.fused_linear_cross_entropy or opts.cross_entropy,
        }
        return ModelFacts(replaces=tuple(name for name, on in taken.items() if on))

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        function, kwargs = liger_call(model.config.model_type, cfg.options("liger"), cfg.model)
        backend = importlib.import_module("liger_kernel.transformers")
        getattr(backend, function)(model=model, **kwargs)
        return model


LIGER = LigerPatch()
