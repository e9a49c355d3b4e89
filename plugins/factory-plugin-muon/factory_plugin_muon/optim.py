"""Muon on the hidden weight matrices, AdamW on everything else (embeddings, head, norms, biases).

torch ships Muon (``torch.optim.Muon``), which takes 2-D parameters only; Muon's authors pair it
with AdamW for the rest. The Trainer drives one optimizer, so :class:`MuonWithAdamW` holds both
and shares their parameter groups (the learning-rate schedule reaches both). With ``adjust_lr:
match_rms_adamw`` (Moonlight's rule, LLaMA-Factory's Muon) Muon's step has AdamW's RMS, so the one
``learning_rate`` suits both halves.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from typing import Any

import torch

from factory.plugin_api import RunConfig, split_groups


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer to the Trainer: ``muon`` and ``adamw`` step their own groups, which are also this one's."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.parts = {"muon": muon, "adamw": adamw}
        # The same group dicts, so a scheduler setting this optimizer's lr sets theirs.
        super().__init__([*muon.param_groups, *adamw.param_groups], defaults={})
        self.state = ChainMap(muon.state, adamw.state)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Each part loads its own, then the loaded settings go back into the group dicts this optimizer shares.

        torch's ``load_state_dict`` gives a part new group dicts and a new state; a learning-rate
        scheduler built before the load (as the Trainer builds it) holds the old dicts, so the
        values are copied into those and both lists keep pointing at them.
        """
        for name, part in self.parts.items():
            shared = part.param_groups
            part.load_state_dict(state_dict[name])
            for old, new in zip(shared, part.param_groups, strict=True):
                old.update(new)
            part.param_groups = shared
        self.state = ChainMap(*(part.state for part in self.parts.values()))


class Muon:
    """``optimizer: muon``."""

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        opts = cfg.options("muon")
        muon_groups, adamw_groups = split_groups(model, cfg, param_groups, opts.target, "muon.target")
        muon = torch.optim.Muon(
            muon_groups,
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            momentum=opts.momentum,
            nesterov=opts.nesterov,
            ns_steps=opts.ns_steps,
            adjust_lr_fn=opts.adjust_lr,
        )
        if not adamw_groups:  # everything trained is a Muon weight
            return muon
        adamw = torch.optim.AdamW(
            adamw_groups,
            lr=cfg.learning_rate,
            betas=opts.adamw_betas,
            eps=opts.adamw_eps,
            weight_decay=cfg.weight_decay,
        )
        return MuonWithAdamW(muon, adamw)


MUON = Muon()
