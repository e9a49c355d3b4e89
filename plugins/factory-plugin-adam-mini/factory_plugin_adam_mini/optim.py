"""Adam-mini: Adam whose second moment is one number per block (attention head, output neuron, layer).

The package partitions parameters by name (q_proj/k_proj per head, v/o/MLP/embeddings per row,
anything else as one block) and needs the model's hidden size and head counts, read from its config.
It optimises whole weight matrices: the factors of a LoRA adapter do not split into heads, so only
methods that train whole weights (full, freeze) are accepted.
"""

from __future__ import annotations

from typing import Any

import torch
from adam_mini import Adam_mini

from factory.plugin_api import ConfigError, RunConfig


class AdamMini:
    """``optimizer: adam-mini``."""

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        opts = cfg.options("adam_mini")
        config = model.config
        dim, heads = config.hidden_size, config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        # Adam-mini views each query/key weight as (heads, dim * dim / heads): refuse what does not split.
        head_numel = dim * dim // heads
        group_of = {id(p): group for group in param_groups for p in group["params"]}
        named = [(name, p) for name, p in model.named_parameters() if id(p) in group_of]
        for name, param in named:
            if any(key in name.lower() for key in ("q_proj", "k_proj")) and param.numel() % head_numel:
                raise ConfigError(
                    f"optimizer adam-mini splits query/key weights into {heads} heads, which '{name}' "
                    f"{tuple(param.shape)} of method={cfg.method} does not fit; use method=full or freeze"
                )
        optimizer = Adam_mini(
            named,
            lr=cfg.learning_rate,
            betas=opts.betas,
            eps=opts.eps,
            weight_decay=cfg.weight_decay,
            dim=dim,
            n_heads=heads,
            n_kv_heads=kv_heads,
            verbose=False,
        )
        # Adam-mini makes one group per parameter; keep the adapter's learning rate where it set one
        # (Adam-mini's own rule already takes weight decay off norms and biases).
        for group in optimizer.param_groups:
            adapter_group = group_of[id(group["params"][0])]
            if "lr" in adapter_group:
                group["lr"] = adapter_group["lr"]
        return optimizer


ADAM_MINI = AdamMini()
