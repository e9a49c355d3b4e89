"""RoPE scaling: load the model with scaled ``rope_parameters``; transformers' RoPE functions do the rest.

transformers implements every scaling (``ROPE_INIT_FUNCTIONS``) and builds a model's rotary embedding
from ``config.rope_parameters``. This patch only writes that dict before loading: the checkpoint's own
RoPE parameters (base, partial rotation) plus the type, factor and type-specific keys, and for the
types that need it the original context. The model then saves with its scaling, so a full model
reloads scaled; an adapter run's base needs the patch again at inference.
"""

from __future__ import annotations

import math
from typing import Any

from factory.plugin_api import ConfigError, PluginError, RunConfig, checkpoint_config

# Types whose frequencies depend on the context the model was trained for.
NEEDS_ORIGINAL = ("yarn", "llama3")


def base_config(cfg: RunConfig) -> Any:
    """The checkpoint's config as transformers standardises it (RoPE base and partial rotation filled in)."""
    from transformers import AutoConfig

    raw = checkpoint_config(cfg)
    if "model_type" not in raw:
        raise PluginError(
            f"model '{cfg.model}' has no config.json to read its RoPE parameters from (a GGUF file?); "
            "drop the rope-scaling patch or point model= at a Hugging Face folder"
        )
    fields = {key: value for key, value in raw.items() if key != "model_type"}
    return AutoConfig.for_model(raw["model_type"], **fields)


def scaled_parameters(config: Any, cfg: RunConfig) -> tuple[dict[str, Any], int | None]:
    """The ``rope_parameters`` for the ``rope_scaling`` options, and the new max_position_embeddings (None: keep)."""
    opts = cfg.options("rope_scaling")
    current = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in current:
        raise PluginError(
            f"model '{cfg.model}' ({config.model_type}) does not describe its rotary embedding with one set of "
            "rope_parameters (per-layer RoPE, or no RoPE at all); drop the rope-scaling patch for it"
        )
    if current.get("rope_type", "default") != "default":
        raise PluginError(
            f"model '{cfg.model}' already scales RoPE ({current['rope_type']}, factor {current.get('factor')}); "
            "drop the rope-scaling patch, it would replace that scaling"
        )
    original = opts.original_max_position_embeddings or config.max_position_embeddings
    factor = opts.factor
    if factor is None:
        factor = float(math.ceil(cfg.cutoff_len / original))
        if factor <= 1:
            raise ConfigError(
                f"rope_scaling: cutoff_len={cfg.cutoff_len} fits in the {original} positions model '{cfg.model}' was "
                f"trained for, so there is nothing to scale; set rope_scaling.factor or a cutoff_len above {original}"
            )
    params = {**current, "rope_type": opts.type, "factor": factor}
    if opts.type in NEEDS_ORIGINAL:
        params["original_max_position_embeddings"] = original
    if opts.type == "yarn":
        extra = {"beta_fast": opts.beta_fast, "beta_slow": opts.beta_slow, "attention_factor": opts.attention_factor}
        params.update({key: value for key, value in extra.items() if value is not None})
    if opts.type == "llama3":
        params.update(low_freq_factor=opts.low_freq_factor, high_freq_factor=opts.high_freq_factor)
    # Dynamic NTK reads max_position_embeddings as the trained context and scales past it on its own.
    longer = None if opts.type == "dynamic" else int(original * factor)
    return params, longer


class RopeScalingPatch:
    """``patches: [rope-scaling]``."""

    def before_load(self, cfg: RunConfig, model_kwargs: dict[str, Any]) -> None:
        params, longer = scaled_parameters(base_config(cfg), cfg)
        model_kwargs["rope_parameters"] = params
        if longer is not None:
            model_kwargs["max_position_embeddings"] = longer

    def after_load(self, model: Any, cfg: RunConfig) -> Any:
        wanted = cfg.options("rope_scaling").type
        taken = (getattr(model.config, "rope_parameters", None) or {}).get("rope_type")
        if taken != wanted:
            raise PluginError(
                f"model '{cfg.model}' did not take rope_scaling.type={wanted} (its loader gave rope_type {taken}); "
                "drop the rope-scaling patch for this model"
            )
        return model


ROPE_SCALING = RopeScalingPatch()
