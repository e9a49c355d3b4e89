"""GaLore optimizers: galore-torch's AdamW with GaLore groups for the target weights.

The adapter's parameter groups are kept (their learning rates and weight decay); each is split
into the 2-D weights of the target linear modules, whose gradients GaLore projects to low rank,
and the rest, which get plain AdamW steps from the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from galore_torch.galore_projector import GaLoreProjector

from factory.plugin_api import LayerwiseOptimizer, RunConfig, check_layerwise, projected_groups


def galore_groups(model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``param_groups`` split into GaLore groups (with rank, update_proj_gap, scale, proj_type) and plain ones."""
    opts = cfg.options("galore")
    galore = {
        "rank": opts.rank,
        "update_proj_gap": opts.update_proj_gap,
        "scale": opts.scale,
        "proj_type": opts.proj_type,
    }
    return projected_groups(model, cfg, param_groups, opts.target, "galore.target", galore)


class GaloreAdamW:
    """``optimizer: galore`` (``eight_bit``: ``galore-8bit``, CUDA only; ``layerwise``: ``galore-layerwise``)."""

    def __init__(self, *, eight_bit: bool = False, layerwise: bool = False) -> None:
        self.eight_bit = eight_bit
        self.layerwise = layerwise

    def check_trainable(self, cfg: RunConfig) -> None:
        """Layer-wise steps happen inside backward: nothing can accumulate, clip or all-reduce gradients first."""
        if self.layerwise:
            check_layerwise(cfg, "galore-layerwise", "galore")

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        groups = galore_groups(model, cfg, param_groups)
        # The optimizer state holds GaLoreProjector objects; the Trainer reloads checkpoints with
        # torch.load(weights_only=True), which refuses classes that are not allow-listed.
        torch.serialization.add_safe_globals([GaLoreProjector])
        if self.eight_bit:
            from galore_torch import GaLoreAdamW8bit

            return GaLoreAdamW8bit(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from galore_torch import GaLoreAdamW as AdamW

        def build(params: list[dict[str, Any]]) -> torch.optim.Optimizer:
            return AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, no_deprecation_warning=True)

        if not self.layerwise:
            return build(groups)
        self.check_trainable(cfg)
        for group in groups:
            group.setdefault("lr", cfg.learning_rate)
        return LayerwiseOptimizer(groups, lambda group: build([group]))


GALORE = GaloreAdamW()
GALORE_8BIT = GaloreAdamW(eight_bit=True)
GALORE_LAYERWISE = GaloreAdamW(layerwise=True)
