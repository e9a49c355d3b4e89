"""factory's Trainer: the Hugging Face Trainer with the chunked causal-LM loss and less work per step."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer

from factory.train.loss import LogitsWorkspace, chunked_causal_lm_loss, split_head


class FactoryTrainer(Trainer):
    """Uses :func:`chunked_causal_lm_loss` for training steps where the model allows it.

    Evaluation that needs only the loss (``prediction_loss_only``, factory's default: no metric
    reads the logits) uses it too, so held-out data never materialises full-vocabulary logits.
    Falls back to the library's loss when logits are wanted, for models that transform their
    logits, and under DDP (the forward must go through the DDP wrapper).

    The library walks the whole module tree several times per optimizer step (to count parameters
    for its FLOP estimate, to collect parameters for gradient clipping, and here to find the adapter
    layers); on SmolLM2's LoRA model that was ~20 ms a step, 1-2% of the default workload. Each walk
    is now done once per model and its result kept.
    """

    def __init__(self, *args: Any, chunked_loss: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunked_loss = chunked_loss
        self.logits_workspace = LogitsWorkspace()
        # Keyed weakly by the model: a model replaced mid-way (``model_init`` trials) drops its entries.
        self._walks: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

    def _once(self, what: str, model: Any, walk: Any) -> Any:
        """``walk(model)``, computed on first use for this model (training does not change its module tree)."""
        kept = self._walks.setdefault(model, {})
        if what not in kept:
            kept[what] = walk(model)
        return kept[what]

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The library's estimate, ``6 x tokens x non-embedding parameters``, with the parameters counted once."""
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        return (
            6
            * inputs[main].numel()
            * self._once("parameters", self.model, lambda m: m.num_parameters(exclude_embeddings=True))
        )

    def _clip_grad_norm(self, model: Any) -> Any:
        """Plain single-process runs clip with torch's own function over the model's parameters, listed once.

        Everything else (DeepSpeed, FSDP, DDP, fp16's gradient scaler, DTensor meshes) keeps the
        library's path, which unscales, gathers or shards first.
        """
        if self.accelerator.distributed_type != DistributedType.NO or self.accelerator.scaler is not None:
            return super()._clip_grad_norm(model)
        parameters = self._once("clipped", model, lambda m: list(m.parameters()))
        return torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], self.args.max_grad_norm)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        parts = None
        if self.chunked_loss and not return_outputs and "labels" in inputs and model is self.model:
            parts = split_head(model)
        if parts is None:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        decoder, head = parts
        features = {k: v for k, v in inputs.items() if k != "labels"}
        # Normalise exactly as the library path would for this model (see Trainer.compute_loss).
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        # The decoder and head are called directly, not through the model's forward that accelerate
        # wrapped in autocast, so enter autocast here as that forward would: the head's matmuls then run
        # in the compute dtype as the library's head does, also when the head is a trained fp32 weight
        # (full fine-tuning: outside autocast they ran in fp32, ~2x slower on CPU).
        with self.accelerator.autocast():
            with self._adapter_inputs_uncast(model):
                hidden = decoder(**features, use_cache=False).last_hidden_state
            loss = chunked_causal_lm_loss(hidden, head, inputs["labels"], items, workspace=self.logits_workspace)
        if self.args.average_tokens_across_devices and items is not None:
            loss = loss * self.accelerator.num_processes
        return loss

    @contextmanager
    def _adapter_inputs_uncast(self, model: Any) -> Iterator[None]:
        """Under autocast, stop adapter layers from casting their input to their fp32 weights' dtype.

        PEFT layers cast each input to the adapter weights' dtype; with fp32 adapters over a bf16
        base that is a fp32 copy of the input per layer, each kept for the backward pass (a third of
        a LoRA step's activation memory here), which autocast then casts back to bf16 for the
        matmul. Skipping the cast gives the same numbers, and q/k/v (gate/up) share one saved input.
        """
        if self.accelerator.mixed_precision not in ("bf16", "fp16"):
            yield
            return
        layers = self._once(
            "casting", model, lambda m: [layer for layer in m.modules() if hasattr(layer, "cast_input_dtype_enabled")]
        )
        layers = [layer for layer in layers if layer.cast_input_dtype_enabled is True]
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.cast_input_dtype_enabled = True

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> Any:
        if (
            prediction_loss_only
            and self.chunked_loss
            and "labels" in inputs
            and model is self.model
            and split_head(model)
        ):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
