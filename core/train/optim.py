"""The built-in optimizer (AdamW) and the default parameter grouping other optimizers reuse."""

from __future__ import annotations

from typing import Any

from factory.config import RunConfig


def default_param_groups(model: Any, cfg: RunConfig) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: with weight decay (matrices) and without (biases, norms)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class AdamW:
    """torch.optim.AdamW over the adapter's parameter groups."""

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> Any:
        import torch

        opts = cfg.options("adamw")
        return torch.optim.AdamW(param_groups, lr=cfg.learning_rate, betas=opts.betas, eps=opts.eps, fused=opts.fused or None)
