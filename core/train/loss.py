"""A causal-LM loss that never materialises full-vocabulary fp32 logits for every position.

The default path computes ``lm_head`` over every position of the batch (prompt, padding and all)
and upcasts the whole ``tokens x vocab`` matrix to fp32: for SmolLM2 at batch 4 x 512 that is
~400 MB and a third of the step's matrix work spent on positions that carry no label. Here the
head runs only on positions that have a label, a chunk at a time, and each chunk is
recomputed in the backward pass instead of kept, so peak memory holds one chunk of logits.
No maintained library offers this for an arbitrary transformers model on CPU (Liger's fused
cross-entropy is Triton/GPU only), hence our own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 1024


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden.to(weight.dtype), weight, bias).float()  # k-bit preparation may upcast the final norm
    return F.cross_entropy(logits, labels, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """Next-token cross-entropy of ``head(hidden)`` against ``labels`` (-100 = ignored), like transformers'.

    Normalised as transformers does: by ``num_items_in_batch`` when given (gradient accumulation),
    else by the number of labelled positions.
    """
    targets = labels[:, 1:]
    keep = targets != -100
    selected = hidden[:, :-1][keep]
    wanted = targets[keep]
    weight, bias = head.weight, head.bias
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.numel(), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, selected[part], weight, bias, wanted[part], use_reentrant=False)
        else:
            total = total + _chunk_loss(selected[part], weight, bias, wanted[part])
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total / denominator


def split_head(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """(decoder, lm_head) of a plain causal LM whose logits are just ``lm_head(hidden)``; None otherwise.

    Models that scale or soft-cap their logits, or whose head is not a linear layer, keep the
    library's own loss.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        return None
    decoder = get_decoder()
    if decoder is None or decoder is base:
        return None
    return decoder, head
