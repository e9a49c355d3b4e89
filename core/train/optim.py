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


def fused_adamw_fits(param_groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused AdamW takes these parameters: plain floating-point tensors on CPU or CUDA.

    One kernel per parameter instead of a dozen ``foreach`` passes: a LoRA r=8 step's update over
    SmolLM2's 420 adapter matrices went from 16 to 4 ms on CPU. transformers' own default optimizer
    is the fused one too.
    """
    import torch

    params = [p for group in param_groups for p in group["params"]]
    return all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.is_floating_point()
               and p.device.type in ("cpu", "cuda") for p in params)


class AdamW:
    """torch.optim.AdamW over the adapter's parameter groups."""

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> Any:
        import torch

        opts = cfg.options("adamw")
        fused = fused_adamw_fits(param_groups) if opts.fused is None else opts.fused
        return torch.optim.AdamW(param_groups, lr=cfg.learning_rate, betas=opts.betas, eps=opts.eps, fused=fused or None)
