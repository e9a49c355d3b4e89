"""GaLore optimizers: galore-torch's AdamW with GaLore groups for the target weights.

The adapter's parameter groups are kept (their learning rates and weight decay); each is split
into the 2-D weights of the target linear modules, whose gradients GaLore projects to low rank,
and the rest, which get plain AdamW steps from the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from galore_torch.galore_projector import GaLoreProjector

from factory.plugin_api import ConfigError, RunConfig, is_linear, matches, resolve_targets


def projected_weights(model: Any, target: str | list[str]) -> set[int]:
    """ids of the 2-D weights of the linear modules ``target`` selects (``all``: all but the head)."""
    names = resolve_targets(model, target, "galore.target")
    return {
        id(module.weight)
        for name, module in model.named_modules()
        if is_linear(module) and matches(name, names) and module.weight.ndim == 2
    }


def galore_groups(model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``param_groups`` split into GaLore groups (with rank, update_proj_gap, scale, proj_type) and plain ones."""
    opts = cfg.options("galore")
    projected = projected_weights(model, opts.target)
    galore = {"rank": opts.rank, "update_proj_gap": opts.update_proj_gap, "scale": opts.scale, "proj_type": opts.proj_type}
    groups = []
    for group in param_groups:
        settings = {key: value for key, value in group.items() if key != "params"}
        params = list(group["params"])
        low_rank = [p for p in params if id(p) in projected]
        plain = [p for p in params if id(p) not in projected]
        if low_rank:
            groups.append({**settings, **galore, "params": low_rank})
        if plain:
            groups.append({**settings, "params": plain})
    if not any("rank" in group for group in groups):
        raise ConfigError(
            f"galore.target={opts.target!r} selects no trainable 2-D weight of a linear layer under "
            f"method={cfg.method}; target modules that the method trains, or use method=full"
        )
    return groups


class GaloreAdamW:
    """``optimizer: galore`` (``eight_bit``: ``galore-8bit``, CUDA only)."""

    def __init__(self, *, eight_bit: bool = False) -> None:
        self.eight_bit = eight_bit

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        groups = galore_groups(model, cfg, param_groups)
        # The optimizer state holds GaLoreProjector objects; the Trainer reloads checkpoints with
        # torch.load(weights_only=True), which refuses classes that are not allow-listed.
        torch.serialization.add_safe_globals([GaLoreProjector])
        if self.eight_bit:
            from galore_torch import GaLoreAdamW8bit

            return GaLoreAdamW8bit(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from galore_torch import GaLoreAdamW as AdamW

        return AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, no_deprecation_warning=True)


GALORE = GaloreAdamW()
GALORE_8BIT = GaloreAdamW(eight_bit=True)
