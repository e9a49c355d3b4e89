"""BAdam: badam's BlockOptimizer wrapping torch AdamW, one block (decoder layer) trained at a time,
or (``badam.mode: ratio``) badam's BlockOptimizerRatio, a sparse Adam on a fraction of every weight.

Only the parameters in the adapter's groups take part, so ``method: freeze`` restricts BAdam to
the layers it trains; with ``method: full`` every decoder layer takes its turn.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from badam import BAdamCallback, BlockOptimizer, BlockOptimizerRatio

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


class FactoryBlockOptimizerRatio(BlockOptimizerRatio):
    """badam's BlockOptimizerRatio with three fixes (badam 1.4) for a Trainer-driven run.

    - The sparse gradients wait in the optimizer between backward and ``step`` (see
      :meth:`sparse_update_hook`), so the Trainer's gradient-norm logging does not fail on them.
    - ``mask_mode: scatter`` draws its entries from a generator of its own: badam re-seeds torch's
      global generator with each weight's seed on every step, which would make dropout and anything
      else drawing from it repeat the same numbers step after step.
    - The state dict also records the step count and each weight's mask offset and seed, so a
      resumed run picks up the same entries (badam restarted them from the first), and holds plain
      dicts, which the Trainer's ``weights_only`` reload accepts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.held: dict[torch.Tensor, torch.Tensor] = {}
        super().__init__(*args, **kwargs)

    def sparse_update_hook(self) -> Any:
        """badam's hook, after which the sparse gradient waits in the optimizer instead of in ``param.grad``.

        The Trainer measures the gradient's norm after every backward (to log it, even without
        clipping) with torch's ``clip_grad_norm_``, which cannot take sparse tensors.
        """
        sparsify = super().sparse_update_hook()

        def hold(param: torch.Tensor) -> None:
            sparsify(param)
            self.held[param] = param.grad
            param.grad = None

        return hold

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for param, grad in self.held.items():
            param.grad = grad
        self.held = {}
        return super().step(closure)

    def _generate_mask_scatter(self, param: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
        count, chosen = param.numel(), int(param.numel() * ratio)
        generator = torch.Generator(device=param.device).manual_seed(self.sparse_dict[param]["seed"])
        order = torch.randperm(count, device=param.device, generator=generator)
        picked = (
            torch.cat([order[offset:], order[: offset + chosen - count]])
            if offset + chosen > count
            else order[offset : offset + chosen]
        )
        indices = torch.vstack(torch.unravel_index(picked, param.size()))
        return torch.sparse_coo_tensor(indices, torch.ones(chosen, device=param.device, dtype=param.dtype), param.shape)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # badam resets a weight's state to a defaultdict at each switch, which weights_only loading refuses
        state["state"] = {key: dict(value) for key, value in state["state"].items()}
        params = [param for _, param in self.named_parameters_list]
        state["ratio"] = {
            "global_step": self.global_step,
            "offsets": [self.sparse_dict[param]["offset"] for param in params],
            "seeds": [self.sparse_dict[param]["seed"] for param in params],
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        ratio = state_dict.pop("ratio")
        super().load_state_dict(state_dict)
        self.global_step = ratio["global_step"]
        for (_, param), offset, seed in zip(self.named_parameters_list, ratio["offsets"], ratio["seeds"]):
            self.sparse_dict[param].update(offset=offset, seed=seed)
        self.mask_dict.clear()  # rebuilt from the offsets and seeds on the next backward


def blocks_of(names: list[str], include_embedding: bool, include_lm_head: bool) -> list[list[str]]:
    """badam's own split of parameter names into blocks (one per decoder layer, plus the options')."""
    # infer_param_groups uses nothing of the instance; calling it here lets the block count be
    # checked before BlockOptimizer's constructor starts switching requires_grad flags.
    return BlockOptimizer.infer_param_groups(None, names, include_embedding, include_lm_head)


class BAdam:
    """``optimizer: badam``."""

    def check_trainable(self, cfg: RunConfig) -> None:
        """Ratio mode sparsifies each gradient inside backward; refuse what would then go wrong."""
        if cfg.options("badam").mode != "ratio":
            return
        name = "badam.mode=ratio turns each gradient into a sparse one inside backward"
        if cfg.gradient_accumulation_steps != 1:
            raise ConfigError(
                f"{name}, so gradients cannot accumulate over gradient_accumulation_steps="
                f"{cfg.gradient_accumulation_steps}; set it to 1 (raise batch_size instead)"
            )
        if cfg.max_grad_norm > 0:
            raise ConfigError(
                f"{name}, whose norm torch's gradient clipping cannot take, so max_grad_norm="
                f"{cfg.max_grad_norm} cannot apply; set max_grad_norm=0"
            )
        if cfg.weight_decay > 0:
            raise ConfigError(
                f"{name} and steps with sparse Adam, which has no weight decay, so weight_decay="
                f"{cfg.weight_decay} cannot apply; set weight_decay=0"
            )
        if cfg.nproc > 1 or cfg.deepspeed or cfg.fsdp:
            raise ConfigError(
                f"{name}, which processes cannot average, so it trains in one process only; "
                "drop nproc, deepspeed and fsdp or use badam.mode=layer"
            )

    def create(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        opts = cfg.options("badam")
        if opts.mode == "ratio":
            return self.ratio(model, cfg, param_groups)
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

    def ratio(self, model: Any, cfg: RunConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """BlockOptimizerRatio over the adapter's groups; it finds embeddings and head by name among all parameters."""
        self.check_trainable(cfg)
        opts = cfg.options("badam")
        named = list(model.named_parameters())
        # badam freezes the head when it is not included, and fails when there is none to find (tied embeddings).
        has_head = any("lm_head" in name for name, _ in named)
        return FactoryBlockOptimizerRatio(
            param_groups,
            named,
            update_ratio=opts.update_ratio,
            switch_every=opts.switch_every,
            mask_mode=opts.mask_mode,
            lr=cfg.learning_rate,
            include_embedding=opts.include_embedding,
            include_lm_head=opts.include_lm_head or not has_head,
            verbose=opts.verbose,
        )

    def callbacks(self, cfg: RunConfig) -> list[Any]:
        """badam's callback hands the BlockOptimizer to DeepSpeed ZeRO-3; nothing else needs it."""
        return [BAdamCallback()] if cfg.deepspeed else []


BADAM = BAdam()
