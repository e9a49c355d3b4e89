"""factory's Trainer: the Hugging Face Trainer with the chunked causal-LM loss."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from factory.train.loss import chunked_causal_lm_loss, split_head


class FactoryTrainer(Trainer):
    """Uses :func:`chunked_causal_lm_loss` for training steps where the model allows it.

    Falls back to the library's loss for evaluation (which needs the logits), for models that
    transform their logits, and under DDP (the forward must go through the DDP wrapper).
    """

    def __init__(self, *args: Any, chunked_loss: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunked_loss = chunked_loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        parts = None
        if self.chunked_loss and not return_outputs and "labels" in inputs and model is self.model:
            parts = split_head(model)
        if parts is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        decoder, head = parts
        features = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = decoder(**features, use_cache=False).last_hidden_state
        # Normalise exactly as the library path would for this model (see Trainer.compute_loss).
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = chunked_causal_lm_loss(hidden, head, inputs["labels"], items)
        if self.args.average_tokens_across_devices and items is not None:
            loss = loss * self.accelerator.num_processes
        return loss
