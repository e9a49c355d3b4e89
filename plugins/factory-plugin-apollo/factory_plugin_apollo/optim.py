"""APOLLO: apollo-torch's AdamW, with APOLLO groups for the target weights.

APOLLO keeps Adam's moments only in a random rank-r projection of each target weight's gradient and
uses them to scale the full gradient per channel (or per tensor), so its memory is close to SGD's.
The adapter's parameter groups are split like GaLore's (:func:`factory.plugin_api.projected_groups`):
target 2-D weights get the APOLLO settings, everything else plain AdamW steps from the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from apollo_torch.random_projector import GradientProjector
from apollo_torch.svd_projector import GaLoreProjector

from factory.plugin_api import RunConfig, projected_groups


class Apollo:
    """``optimizer: apollo`` (``mini``: ``apollo-mini``, rank 1 and one scale per tensor)."""

    def __init__(self, *, mini: bool = False) -> None:
        self.mini = mini

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

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        from apollo_torch import APOLLOAdamW

        opts = cfg.options("apollo")
        groups = projected_groups(model, cfg, param_groups, opts.target, "apollo.target", self.settings(cfg))
        # The state holds projector objects; the Trainer reloads checkpoints with weights_only=True.
        torch.serialization.add_safe_globals([GradientProjector, GaLoreProjector])
        return APOLLOAdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, scale_front=opts.scale_front)


APOLLO = Apollo()
APOLLO_MINI = Apollo(mini=True)
