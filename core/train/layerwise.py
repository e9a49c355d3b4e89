"""Layer-wise stepping: one optimizer per parameter, stepped from that parameter's gradient hook.

Shared by the optimizer plugins that offer a layer-wise variant (galore-layerwise, apollo-layerwise)
through :mod:`factory.plugin_api`.

As soon as backward has accumulated a parameter's gradient, its own optimizer takes the step and
the gradient is dropped, so at most one weight's gradient lives at a time instead of the whole
model's (GaLore's paper trains a 7B model on 24 GB this way). transformers has the same idea behind
``optim="galore_adamw_layerwise"``, but bound to its own optimizer names and scheduler; factory's
optimizer plugins return a ``torch.optim.Optimizer`` to the Trainer, hence this small class.

The Trainer still calls ``step()`` and ``zero_grad()``, which do nothing here, and drives the learning
rate through ``param_groups``: each hook copies its group's current ``lr`` into the parameter's optimizer
before stepping, so warm-up and decay apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from factory.config import RunConfig
from factory.errors import ConfigError


def check_layerwise(cfg: RunConfig, optimizer: str, instead: str) -> None:
    """Refuse what layer-wise steps cannot honour: they happen inside backward, so nothing can
    accumulate, clip or all-reduce the gradients first (``instead``: the optimizer to suggest)."""
    name = f"optimizer {optimizer} steps each weight as soon as backward reaches it"
    if cfg.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"{name}, so gradients cannot accumulate over "
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}; set it to 1 "
            f"(raise batch_size instead) or use optimizer={instead}"
        )
    if cfg.max_grad_norm > 0:
        raise ConfigError(
            f"{name}, before the whole gradient's norm is known, so max_grad_norm={cfg.max_grad_norm} "
            f"cannot clip it; set max_grad_norm=0 or use optimizer={instead}"
        )
    if cfg.nproc > 1 or cfg.deepspeed or cfg.fsdp:
        raise ConfigError(
            f"{name}, before processes could average their gradients, so it trains in one process "
            f"only; drop nproc, deepspeed and fsdp or use optimizer={instead}"
        )


class LayerwiseOptimizer(torch.optim.Optimizer):
    """The Trainer-facing optimizer over ``param_groups``; ``build(group)`` makes each parameter's own."""

    def __init__(
        self, param_groups: list[dict[str, Any]], build: Callable[[dict[str, Any]], torch.optim.Optimizer]
    ) -> None:
        super().__init__(param_groups, defaults={})
        self.per_param: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self.hooks = []
        for group in self.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                self.per_param[param] = build({**settings, "params": [param]})
                self.hooks.append(param.register_post_accumulate_grad_hook(self._stepper(group)))

    def _stepper(self, group: dict[str, Any]) -> Callable[[torch.Tensor], None]:
        def step_one(param: torch.Tensor) -> None:
            optimizer = self.per_param[param]
            optimizer.param_groups[0]["lr"] = group["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step_one

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Nothing left to do: every parameter stepped during backward."""
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients were dropped by the hooks already."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "lrs": [group["lr"] for group in self.param_groups],
            "per_param": [optimizer.state_dict() for optimizer in self.per_param.values()],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group, lr in zip(self.param_groups, state_dict["lrs"]):
            group["lr"] = lr
        for optimizer, state in zip(self.per_param.values(), state_dict["per_param"]):
            optimizer.load_state_dict(state)

    def remove_hooks(self) -> None:
        """Detach the per-parameter steps (a model handed to another optimizer)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
