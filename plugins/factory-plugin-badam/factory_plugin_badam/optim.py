"""BAdam: badam's BlockOptimizer wrapping torch AdamW, one block (decoder layer) trained at a time.

Only the parameters in the adapter's groups take part, so ``method: freeze`` restricts BAdam to
the layers it trains; with ``method: full`` every decoder layer takes its turn.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from badam import BAdamCallback, BlockOptimizer

from factory.plugin_api import ConfigError, RunConfig


class FactoryBlockOptimizer(BlockOptimizer):
    """badam's BlockOptimizer with two fixes (badam 1.4) that a Trainer-driven run needs.

    - ``verbose`` is honoured: badam switches blocks with ``switch_trainable_params()``, whose own
      default prints every switch whatever ``verbose`` says.
    - The state dict records which block is active, where the schedule stands and the learning
      rate the LR scheduler set. badam's is the base optimizer's alone, so a resumed run
      restarted the schedule, gave the saved Adam moments of one block to another block of the
      same shape, and took its next step at the initial learning rate.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.state_dict  # badam binds the base optimizer's state_dict here; use the method below

    def switch_trainable_params(self, verbose: int | None = None) -> None:
        self.active_block = self.current_block_idx
        super().switch_trainable_params(self.verbose if verbose is None else verbose)

    def state_dict(self) -> dict[str, Any]:
        schedule = {
            "global_step": self.global_step,
            "active_block": self.active_block,
            "next_block": self.current_block_idx,
            "lrs": [group["lr"] for group in self.param_groups],
        }
        if self.switch_mode == "random":
            schedule["block_order"] = list(self.block_order)
        return {"base": self.base_optimizer.state_dict(), "schedule": schedule}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        schedule = state_dict["schedule"]
        self.current_block_idx = schedule["active_block"]
        self.switch_trainable_params()  # copies the (already restored) weights of that block
        self.current_block_idx = schedule["next_block"]
        self.global_step = schedule["global_step"]
        if "block_order" in schedule:
            self.block_order = list(schedule["block_order"])
        for group, lr in zip(self.param_groups, schedule["lrs"]):
            group["lr"] = lr
        self.base_optimizer.load_state_dict(state_dict["base"])


def blocks_of(names: list[str], include_embedding: bool, include_lm_head: bool) -> list[list[str]]:
    """badam's own split of parameter names into blocks (one per decoder layer, plus the options')."""
    # infer_param_groups uses nothing of the instance; calling it here lets the block count be
    # checked before BlockOptimizer's constructor starts switching requires_grad flags.
    return BlockOptimizer.infer_param_groups(None, names, include_embedding, include_lm_head)


class BAdam:
    """``optimizer: badam``."""

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        opts = cfg.options("badam")
        in_groups = {id(p) for group in param_groups for p in group["params"]}
        named = [(name, p) for name, p in model.named_parameters() if id(p) in in_groups]
        blocks = blocks_of([name for name, _ in named], opts.include_embedding, opts.include_lm_head)
        if not blocks:
            raise ConfigError(
                f"badam found no decoder layers among the parameters method={cfg.method} trains; "
                "use method=full (or freeze with layers to train)"
            )
        if opts.start_block is not None and opts.start_block >= len(blocks):
            raise ConfigError(
                f"badam.start_block={opts.start_block} but the model has {len(blocks)} blocks; "
                f"choose one from 0 to {len(blocks) - 1}"
            )
        base = torch.optim.AdamW(param_groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        with warnings.catch_warnings():
            # factory keeps trainable weights in fp32 (the Trainer autocasts), which badam warns about
            warnings.filterwarnings("ignore", message="BAdam expect model to be loaded in fp16/bf16")
            return FactoryBlockOptimizer(
                base_optimizer=base,
                named_parameters_list=named,
                block_prefix_list=blocks,
                switch_block_every=opts.switch_every,
                start_block=opts.start_block,
                switch_mode=opts.switch_mode,
                verbose=opts.verbose,
            )

    def callbacks(self, cfg: RunConfig) -> list[Any]:
        """badam's callback hands the BlockOptimizer to DeepSpeed ZeRO-3; nothing else needs it."""
        return [BAdamCallback()] if cfg.deepspeed else []


BADAM = BAdam()
