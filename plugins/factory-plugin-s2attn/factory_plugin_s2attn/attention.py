"""Shifted sparse attention (S2-Attn, LongLoRA): causal attention inside short groups, half the heads shifted.

Training on long sequences with full attention costs memory and time quadratic in the length.
S2-Attn splits the sequence into groups of ``G`` tokens and attends only inside each group;
for half of the heads the group boundaries are shifted by ``G/2`` so information flows between
neighbouring groups. At inference the model runs full attention (the model was fine-tuned to
work with both), so this function hands eval-mode calls to transformers' SDPA.

Shifting is done by re-grouping rather than LongLoRA's ``roll``: the first ``G/2`` tokens form a
group of their own, so no token ever sees a later one (``roll`` wraps the sequence start to the
end, where it attends to the last tokens). Every group runs as one batched causal SDPA call,
so the scores held at once are ``N * G`` per head instead of ``N * N``.

Written here because no maintained library provides S2-Attn for transformers' attention interface.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "s2attn"


def _group_mask(mask: torch.Tensor, groups: int, group: int) -> torch.Tensor:
    """The diagonal ``group x group`` blocks of a ``(B, 1, L, L)`` boolean mask, as ``(B, 1, groups, group, group)``.

    A token may always see itself, so padding rows (which the loss ignores) never have no key at all.
    """
    batch = mask.shape[0]
    blocks = mask.reshape(batch, 1, groups, group, groups, group).diagonal(dim1=2, dim2=4).permute(0, 1, 4, 2, 3)
    return blocks | torch.eye(group, dtype=torch.bool, device=mask.device)


def causal_groups(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: int,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention inside consecutive groups of ``group`` tokens; tensors are ``(B, H, N, D)``.

    ``mask`` is an optional ``(B or 1, 1, N, N)`` boolean mask (True: may attend), e.g. padding or
    packed examples; only its diagonal blocks matter. The sequence is padded at the end to whole
    groups: causality keeps the padding out of every real query.
    """
    batch, heads, length, dim = q.shape
    pad = (-length) % group
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    groups = (length + pad) // group
    # Groups go to the batch dimension: 4-D inputs let SDPA pick its fused kernel (no scores held).
    q, k, v = (
        x.reshape(batch, heads, groups, group, dim).transpose(1, 2).reshape(-1, heads, group, dim) for x in (q, k, v)
    )
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout)
    else:
        if mask.dtype != torch.bool:  # an additive float mask: 0 where attending is allowed
            mask = mask == 0
        mask = F.pad(mask, (0, pad, 0, pad), value=False) if pad else mask
        causal = torch.ones(group, group, dtype=torch.bool, device=q.device).tril()
        blocks = (_group_mask(mask, groups, group) & causal).expand(batch, 1, groups, group, group)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=blocks.transpose(1, 2).reshape(-1, 1, group, group), scale=scale, dropout_p=dropout
        )
    out = out.reshape(batch, groups, heads, group, dim).transpose(1, 2).reshape(batch, heads, length + pad, dim)
    return out[:, :, :length]


def s2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: int,
    *,
    shift: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """S2-Attn over ``(B, H, N, D)`` tensors (keys and values already repeated to H heads).

    Heads ``[0, H/2)`` attend inside groups ``[0, G), [G, 2G), ...``; with ``shift``, heads
    ``[H/2, H)`` inside ``[0, G/2), [G/2, 3G/2), ...``.
    """
    half, offset = q.shape[1] // 2, group // 2
    if not shift or half == 0 or offset == 0:
        return causal_groups(q, k, v, group, scale=scale, mask=mask, dropout=dropout)
    plain = causal_groups(q[:, :half], k[:, :half], v[:, :half], group, scale=scale, mask=mask, dropout=dropout)
    parts = []
    for start, end, size in ((0, offset, offset), (offset, q.shape[2], group)):
        if end > start:
            sub = None if mask is None else mask[..., start:end, start:end]
            parts.append(
                causal_groups(
                    q[:, half:, start:end],
                    k[:, half:, start:end],
                    v[:, half:, start:end],
                    size,
                    scale=scale,
                    mask=sub,
                    dropout=dropout,
                )
            )
    return torch.cat([plain, torch.cat(parts, dim=2)], dim=1)


def s2_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: S2-Attn while training, SDPA (full attention) otherwise."""
    length = query.shape[2]
    if not module.training or key.shape[2] != length:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    repeats = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    group = max(1, int(length * module.s2attn_group_size_ratio))
    out = s2_attention(
        query, key, value, group, shift=module.s2attn_shift, scale=scaling, mask=attention_mask, dropout=dropout
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="s2attn"`` known to transformers (its masks are built as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, s2_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
