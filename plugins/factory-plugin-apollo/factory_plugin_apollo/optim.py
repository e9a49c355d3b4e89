"""APOLLO: apollo-torch's AdamW, with APOLLO groups for the target weights.

APOLLO keeps Adam's moments only in a random rank-r projection of each target weight's gradient and
uses them to scale the full gradient per channel (or per tensor), so its memory is close to SGD's.
The adapter's parameter groups are split like GaLore's (:func:`factory.plugin_api.projected_groups`):
target 2-D weights get the APOLLO settings, everything else plain AdamW steps from the same optimizer.
``apollo-layerwise`` gives every weight its own APOLLOAdamW, stepped from its gradient hook
(:class:`factory.plugin_api.LayerwiseOptimizer`), as LLaMA-Factory's ``apollo_layerwise``.
"""

from __future__ import annotations

from typing import Any

import torch
from apollo_torch.random_projector import GradientProjector
from apollo_torch.svd_projector import GaLoreProjector

from factory.plugin_api import LayerwiseOptimizer, RunConfig, check_layerwise, projected_groups


class Apollo:
    """``optimizer: apollo`` (``mini``: ``apollo-mini``, rank 1 and one scale per tensor; ``layerwise``: ``apollo-layerwise``)."""

    def __init__(self, *, mini: bool = False, layerwise: bool = False) -> None:
        self.mini = mini
        self.layerwise = layerwise

    def settings(self, cfg: RunConfig) -> dict[str, Any]:
        """The per-group keys apollo-torch reads for a projected weight."""
        opts = cfg.options("apollo")
        return {
            "rank": 1 if self.mini else opts.rank,
            "proj": opts.proj,
            "scale_type": "tensor" if self.mini else opts.scale_type,
            "scale": opts.scale if opts.scale is not None else (128.0 if self.mini else 32.0),
            "update_proj_gap": opts.update_proj_gap,
            "proj_type": opts.proj_type,
        }

    def check_trainable(self, cfg: RunConfig) -> None:
        """Layer-wise steps happen inside backward: nothing can accumulate, clip or all-reduce gradients first."""
        if self.layerwise:
            check_layerwise(cfg, "apollo-layerwise", "apollo")

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        from apollo_torch import APOLLOAdamW

        opts = cfg.options("apollo")
        groups = projected_groups(model, cfg, param_groups, opts.target, "apollo.target", self.settings(cfg))
        # The state holds projector objects; the Trainer reloads checkpoints with weights_only=True.
        torch.serialization.add_safe_globals([GradientProjector, GaLoreProjector])

        def build(params: list[dict[str, Any]]) -> torch.optim.Optimizer:
            return APOLLOAdamW(
                params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, scale_front=opts.scale_front
            )

        if not self.layerwise:
            return build(groups)
        self.check_trainable(cfg)
        for group in groups:
            group.setdefault("lr", cfg.learning_rate)
        layerwise = LayerwiseOptimizer(groups, lambda group: build([group]))
        # APOLLOAdamW seeds each weight's random projection by its position in the optimizer; one
        # optimizer per weight would give them all the first seed, so each gets the one it has in apollo.
        for position, (param, optimizer) in enumerate(layerwise.per_param.items(), start=1):
            if param.requires_grad:
                optimizer.state[param]["seed"] = position
        return layerwise


APOLLO = Apollo()
APOLLO_MINI = Apollo(mini=True)
APOLLO_LAYERWISE = Apollo(layerwise=True)
