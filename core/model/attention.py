"""SDPA that attends within each example of a padding-free batch instead of across the whole row.

A padding-free batch is one row holding several examples (``FlatteningCollator``). With plain
``sdpa`` transformers turns the restarting position ids into a block-diagonal mask over the whole
row, so the kernel computes ``(sum of lengths)^2`` scores and, given an explicit mask, cannot skip
the causal upper half. Here each example runs its own causal SDPA call: ``sum(length^2) / 2``
scores, the same result. On this CPU that took attention from ~30% of a LoRA step to a few percent.
transformers' own varlen path is FlashAttention's, which needs CUDA, hence this small wrapper
around transformers' ``sdpa_attention_forward`` (which keeps its GQA and scaling handling).
"""

from __future__ import annotations

from typing import Any

VARLEN_SDPA = "factory_sdpa_varlen"


def _split_bounds(query: Any, key: Any, kwargs: dict[str, Any]) -> list[int] | None:
    """Example boundaries when this call is a whole padding-free row that can be split safely, else None."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return None
    edges = [int(edge) for edge in bounds.tolist()]
    if edges[0] != 0 or edges[-1] != query.shape[2]:
        return None
    window = kwargs.get("sliding_window")
    if window is not None and max(b - a for a, b in zip(edges, edges[1:])) > window:
        return None  # the window, not causality alone, shapes the mask: keep the library's mask
    return edges


def varlen_sdpa_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
    scaling: float | None = None, **kwargs: Any,
) -> tuple[Any, None]:
    """``sdpa_attention_forward``, one causal call per example when the batch is a flattened row."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    edges = _split_bounds(query, key, kwargs) if getattr(module, "is_causal", True) else None
    if edges is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    parts = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, dropout=dropout, scaling=scaling, is_causal=True
        )[0]
        for a, b in zip(edges, edges[1:])
    ]
    return torch.cat(parts, dim=1), None


def register_varlen_sdpa() -> str:
    """Register the attention under :data:`VARLEN_SDPA` (masks as for ``sdpa``) and return that name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if VARLEN_SDPA not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
        AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA
