"""NEFTune: add uniform noise of magnitude alpha / sqrt(L * d) to the input embeddings while training.

A callback rather than a model patch: the noise belongs to the training run only, so it is attached
when training begins and removed when it ends (as transformers' own ``neftune_noise_alpha`` does),
and it works for every stage whose trainer takes factory's callbacks, whatever the method.

Written here rather than through transformers' hook because that hook takes L as the row's length.
factory's padding-free batches put every example of a batch in one row (``position_ids`` restart at
each example), where that would shrink the noise by sqrt(examples per batch); here L is each
example's own length, read from the restarts. Without restarts (padded or plain rows) L is the row
length, exactly transformers' (and the NEFTune reference code's) rule.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from factory.plugin_api import RunConfig


def example_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """For each token of ``(B, L)`` position ids, the length of the example it belongs to (examples start at 0)."""
    starts = position_ids == 0
    starts[:, 0] = True
    segment = starts.cumsum(dim=1) - 1
    counts = torch.zeros_like(segment).scatter_add_(1, segment, torch.ones_like(segment))
    return counts.gather(1, segment)


def attach(model: Any, alpha: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook NEFTune noise into ``model``'s input embeddings (training mode only); returns the handles to remove."""
    seen: dict[str, torch.Tensor | None] = {}

    def remember(_module: Any, _args: tuple, kwargs: dict[str, Any]) -> None:
        seen["position_ids"] = kwargs.get("position_ids")

    def forget(*_: Any) -> None:
        seen.clear()

    def add_noise(module: Any, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        positions = seen.get("position_ids")
        dim = output.shape[-1]
        if positions is None or positions.shape != output.shape[:2]:
            lengths = torch.full(output.shape[:2], output.shape[1], device=output.device)
        else:
            lengths = example_lengths(positions.to(output.device))
        magnitude = (alpha / torch.sqrt(lengths.float() * dim)).to(output.dtype)  # L * d overflows bf16's precision
        return output + torch.zeros_like(output).uniform_(-1, 1) * magnitude.unsqueeze(-1)

    return [
        model.register_forward_pre_hook(remember, with_kwargs=True),
        model.register_forward_hook(forget, always_call=True),
        model.get_input_embeddings().register_forward_hook(add_noise),
    ]


class NeftuneCallback(TrainerCallback):
    """Noise on while the Trainer trains, off afterwards."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.handles = attach(model, self.alpha)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class Neftune:
    """``callbacks: [neftune]``."""

    def create(self, cfg: RunConfig) -> NeftuneCallback:
        return NeftuneCallback(cfg.options("neftune").alpha)


NEFTUNE = Neftune()
