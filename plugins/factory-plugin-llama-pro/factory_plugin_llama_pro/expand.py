"""LLaMA Pro: interleave copies of decoder blocks whose output projections are zero, then train only the copies.

A pre-norm decoder block adds ``attn(...) @ o_proj`` and ``mlp(...) @ down_proj`` to the residual
stream; with both projections zero the copy adds nothing, so the expanded model computes exactly
the original function and training starts from it while the original blocks stay frozen (the
paper's way to add knowledge without forgetting). LLaMA-Factory does the expansion as a separate
script writing a new checkpoint; here it happens when the method is applied, so one run expands
and trains, and the output folder holds the expanded model for plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from factory.plugin_api import ConfigError, RunConfig, decoder_layers

# The linear layers that write a block's two branches into the residual stream (Llama, Mistral, Qwen...).
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")


def identity_copy(block: torch.nn.Module, model: Any) -> torch.nn.Module:
    """A copy of ``block`` whose residual branches output zero."""
    twin = copy.deepcopy(block)
    zeroed = set()
    for name, module in twin.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in OUTPUT_PROJECTIONS:
            for param in module.parameters(recurse=False):
                param.data.zero_()
            zeroed.add(leaf)
    if zeroed != set(OUTPUT_PROJECTIONS):
        raise ConfigError(
            f"method llama-pro zeroes the {' and '.join(OUTPUT_PROJECTIONS)} layers of each new block, which "
            f"{type(model).__name__} ({model.config.model_type}) does not name so; use a Llama-family model or method=freeze"
        )
    return twin


class LlamaPro:
    """``method: llama-pro``: expand, freeze the original weights, save the whole expanded model."""

    name = "llama-pro"

    def apply(self, model: Any, cfg: RunConfig) -> Any:
        expand = cfg.options("llama_pro").expand
        layers = decoder_layers(model)
        count = len(layers)
        if count % expand:
            divisors = [str(d) for d in range(1, count + 1) if count % d == 0]
            raise ConfigError(
                f"llama_pro.expand={expand} does not divide the {count} decoder layers of model '{cfg.model}' into equal "
                f"groups; choose one of {', '.join(divisors)}"
            )
        every = count // expand
        config = model.config
        types = list(getattr(config, "layer_types", None) or [])
        blocks, new_types, added = [], [], []
        for index, block in enumerate(layers):
            blocks.append(block)
            new_types += types[index : index + 1]
            if (index + 1) % every == 0:
                twin = identity_copy(block, model)
                blocks.append(twin)
                new_types += types[index : index + 1]
                added.append(twin)
        del layers[:]
        layers.extend(blocks)
        for index, block in enumerate(layers):
            for module in block.modules():
                if hasattr(module, "layer_idx"):  # the KV cache slot each attention writes
                    module.layer_idx = index
        config.num_hidden_layers = len(layers)
        if types:
            config.layer_types = new_types
        for param in model.parameters():
            param.requires_grad_(False)
        for block in added:
            for param in block.parameters():
                param.requires_grad_(True)
        return model

    def save(self, model: Any, output_dir: str) -> None:
        """The whole expanded model: it loads with ``AutoModelForCausalLM.from_pretrained(output_dir)``."""
        model.save_pretrained(output_dir, safe_serialization=True)

    def load(self, model: Any, adapter_dir: str, cfg: RunConfig) -> Any:
        raise ConfigError(
            f"'{adapter_dir}' holds a whole expanded model from method=llama-pro, not an adapter; "
            f"load it with model={adapter_dir} and no adapter"
        )

    def merge(self, model: Any) -> Any:
        return model


LLAMA_PRO = LlamaPro()
