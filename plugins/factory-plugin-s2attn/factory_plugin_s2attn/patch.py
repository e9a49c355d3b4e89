"""The S2-Attn patch: load the model with the ``s2attn`` attention function and give it the options."""

from __future__ import annotations

from typing import Any

from factory.plugin_api import ModelFacts, PluginError, RunConfig, checkpoint_config
from factory_plugin_s2attn.attention import NAME, register

# Llama-family decoders: rotary attention through transformers' attention interface, no sliding window.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _check_type(model_type: str | None, model: str) -> None:
    if model_type is not None and model_type not in SUPPORTED:
        raise PluginError(
            f"model '{model}' is of type '{model_type}', whose attention S2-Attn does not patch; drop the s2attn patch "
            f"or use a model of type {', '.join(SUPPORTED)}"
        )


class S2AttnPatch:
    """``patches: [s2attn]``: shifted sparse attention while training, full attention at inference."""

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> ModelFacts:
        _check_type(checkpoint_config(cfg).get("model_type"), cfg.model)
        register()
        model_kwargs["attn_implementation"] = NAME
        # Groups are cut per row: a padding-free batch (all examples in one row) would make them a
        # fraction of the whole batch, across example boundaries; LongLoRA groups each sequence.
        return ModelFacts(attn_implementation=NAME, padding_free=False)

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        config = model.config
        _check_type(config.model_type, cfg.model)
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            raise PluginError(
                f"model '{cfg.model}' uses sliding-window attention ({config.sliding_window} tokens), which S2-Attn "
                "would silently replace; drop the s2attn patch for this model"
            )
        if config._attn_implementation != NAME:
            raise PluginError(f"model '{cfg.model}' did not take attn_implementation {NAME}; drop the s2attn patch")
        opts = cfg.options("s2attn")
        for module in model.modules():
            if type(module).__name__.endswith("Attention"):
                module.s2attn_group_size_ratio = opts.group_size_ratio
                module.s2attn_shift = opts.shift
        return model


S2ATTN = S2AttnPatch()
