"""SDPA that attends within each example of a padding-free batch instead of across the whole row.

A padding-free batch is one row holding several examples (``FlatteningCollator``). With plain
``sdpa`` transformers turns the restarting position ids into a block-diagonal mask over the whole
row, so the kernel computes ``(sum of lengths)^2`` scores and, given an explicit mask, cannot skip
the causal upper half. Here each example runs its own causal SDPA call: ``sum(length^2) / 2``
scores, the same result. On this CPU that took attention from ~30% of a LoRA step to a few percent.
transformers' own varlen path is FlashAttention's, which needs CUDA, hence this small wrapper
around transformers' ``sdpa_attention_forward`` (which keeps its GQA and scaling handling).

Examples up to :data:`SHORT_EXAMPLE` tokens (most chat data) take :class:`GroupedCausalAttention`
instead of SDPA when training on CPU: torch's CPU flash kernel works in blocks sized for long
sequences and its backward recomputes the scores, so up to 512 tokens it ran 1.5-4x slower
(forward and backward) than two plain matmuls that keep the probabilities. Those cost
``heads * L^2`` values per layer in the compute dtype: at most ``heads * 512`` per token, 4.7 MB
per layer for a 512-token SmolLM2 example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

VARLEN_SDPA = "factory_sdpa_varlen"

# Longest example attended with GroupedCausalAttention. Measured in bf16 forward and backward against
# the flash kernel: 1.5-2x faster at 512 tokens for SmolLM2's shape (9 query heads, 3 key/value
# heads, 64 dims), Qwen2.5-0.5B's (14/2/64) and Llama-3-8B's (32/8/128), and slower from ~700 on,
# where the L^2 probabilities no longer stay in cache and the flash kernel's blocking wins.
SHORT_EXAMPLE = 512

# Positions per query block of GroupedCausalAttention. Each block scores only the keys up to its own
# end, so a long example skips most of the causal upper triangle: at 512 tokens 4 blocks compute 5/8
# of the scores. Measured on SmolLM2's shape: 15-30% faster from ~276 tokens on; shorter examples are one block.
ATTENTION_BLOCK = 128

_CAUSAL: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _causal_bias(length: int, heads: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive causal mask of ``length`` positions for rows stacked position-major (``heads`` rows per position).

    Row ``p * heads + r`` is query head ``r`` at position ``p``: 0 for keys up to ``p``, -inf after.
    Sliced from one cached mask, which stays valid for any shorter length.
    """
    bias = _CAUSAL.get((heads, dtype, device))
    if bias is None or bias.shape[1] < length:
        square = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)
        bias = _CAUSAL[heads, dtype, device] = square.repeat_interleave(heads, 0)
    return bias[: length * heads, :length]


Bands = tuple[tuple[int, int, int, int], ...]
"""``(query start, query end, key start, key end)``: queries in the first range do not see keys in the second."""


@dataclass
class KeyCache:
    """The keys and values of every attention layer of one padding-free forward, detached, for continuations.

    Pass it as ``key_cache`` to a forward to fill it. A later no-gradient forward continues examples of
    that row without recomputing their prefix: ``prefix_keys=(cache, spans)``, where ``spans[i]`` is the
    ``(start, end)`` of the captured row that example ``i`` of the new row continues (its positions
    start at ``end - start``). KTO's mismatched pairs use it: each prompt's keys come from the step's
    own pass over ``[prompt, completion]``, so ``[prompt, other completion]`` costs only the completion.
    ``hidden`` is for the caller (the captured forward's last hidden states).
    """

    layers: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    masks: dict[tuple[int, int, torch.dtype], torch.Tensor] = field(default_factory=dict)  # per shape, every layer


def _continued(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    edges: list[int],
    prefix: Any,
    scale: float,
) -> torch.Tensor:
    """Attention of a row of continuations: example ``i`` sees its captured prefix, then itself causally.

    Written as two matmuls per example, each key/value head's query heads stacked (no gradient, so the
    probabilities are not kept): SDPA's CPU flash kernel cannot skip anything under the explicit mask
    this needs and took 1.7x as long at KTO's lengths.
    """
    cache, spans = prefix
    if torch.is_grad_enabled() and query.requires_grad:
        raise ValueError("prefix_keys continue a captured forward without gradients; call it under torch.no_grad()")
    if len(spans) != len(edges) - 1:
        raise ValueError(f"prefix_keys name {len(spans)} prefixes for a row of {len(edges) - 1} examples")
    kept_key, kept_value = cache.layers[module]
    batch, heads, _, dim = query.shape
    groups = key.shape[1]
    out = query.new_empty(batch, edges[-1], heads, dim)
    for (first, last), (start, end) in zip(zip(edges, edges[1:]), spans):
        length, before = last - first, end - start
        keys = torch.cat([kept_key[:, :, start:end], key[:, :, first:last]], dim=2).flatten(0, 1)
        values = torch.cat([kept_value[:, :, start:end], value[:, :, first:last]], dim=2).flatten(0, 1)
        bias = cache.masks.get((before, length, query.dtype))
        if bias is None:  # rows (query head in its group, position): the prefix, then causal
            square = torch.full((length, length), float("-inf"), dtype=query.dtype, device=query.device).triu_(1)
            visible = torch.cat([square.new_zeros(length, before), square], dim=1)
            bias = cache.masks[before, length, query.dtype] = visible.repeat(heads // groups, 1)
        rows = query[:, :, first:last].reshape(batch * groups, heads // groups * length, dim)
        probs = torch.softmax(torch.baddbmm(bias, rows, keys.transpose(1, 2), alpha=scale), -1)
        out[:, first:last] = torch.bmm(probs, values).view(batch, heads, length, dim).transpose(1, 2)
    return out


def _blocks(edges: tuple[int, ...], bands: Bands = ()) -> list[tuple[int, int, int]]:
    """``(example start, block start, block end)`` for equal query blocks of about :data:`ATTENTION_BLOCK` positions.

    ``edges`` are the example boundaries along the sequence (``(0, L)`` for one example). A band's
    query range starts a block of its own, so each block is wholly inside a band or outside all.
    """
    blocks = []
    starts = {band[0] for band in bands}
    for first, last in zip(edges, edges[1:]):
        segments = [first, *sorted(cut for cut in starts if first < cut < last), last]
        for low, high in zip(segments, segments[1:]):
            count = max(1, round((high - low) / ATTENTION_BLOCK))
            cuts = [low + (high - low) * i // count for i in range(count + 1)]
            blocks += [(first, start, end) for start, end in zip(cuts, cuts[1:])]
    return blocks


Segments = tuple[tuple[int, int], ...]
"""The key ranges a block scores, along the sequence: its example's keys up to the block's end, less hidden bands."""

_BAND_MASKS: dict[tuple, list[tuple[torch.Tensor, Segments]]] = {}


def _block_masks(
    edges: tuple[int, ...], bands: Bands, per_group: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, Segments]]:
    """Each block's additive causal mask (stacked rows, its keys) and the key segments it scores.

    A band's hidden keys are left out of its blocks' keys altogether rather than masked: in a
    shared-prompt pair the rejected answer's queries skip the chosen answer's keys, about a quarter
    of a DPO pair's attention work. Every layer of a forward pass reads the same masks; only the
    latest batch's are kept.
    """
    key = (edges, bands, per_group, dtype, device, ATTENTION_BLOCK)
    if key not in _BAND_MASKS:
        _BAND_MASKS.clear()
        longest = max(b - a for a, b in zip(edges, edges[1:]))
        causal = _causal_bias(longest, per_group, dtype, device)
        masks = []
        for first, start, end in _blocks(edges, bands):
            mask = causal[(start - first) * per_group : (end - first) * per_group, : end - first]
            segments: Segments = ((first, end),)
            for _, _, key_start, key_end in (band for band in bands if band[0] <= start and end <= band[1]):
                segments = tuple(
                    part
                    for low, high in segments
                    for part in ((low, min(high, key_start)), (max(low, key_end), high))
                    if part[0] < part[1]
                )
            if segments != ((first, end),):
                mask = torch.cat([mask[:, low - first : high - first] for low, high in segments], 1)
            masks.append((mask, segments))
        _BAND_MASKS[key] = masks
    return _BAND_MASKS[key]


def _gathered(tensor: torch.Tensor, segments: Segments) -> torch.Tensor:
    """``(batch, groups, L, D)`` keys or values at ``segments`` as contiguous ``(batch * groups, keys, D)``."""
    batch, groups, _, dim = tensor.shape
    parts = [tensor[:, :, low:high] for low, high in segments]
    joined = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, 2)
    return joined.view(batch * groups, -1, dim)


def band_mask(length: int, first: int, bands: Bands, device: torch.device) -> torch.Tensor:
    """The boolean ``length x length`` mask (True = attend) of one example starting at ``first``: causal minus its bands."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril_()
    for query_start, query_end, key_start, key_end in bands:
        if first <= query_start < first + length:
            allowed[query_start - first : query_end - first, key_start - first : key_end - first] = False
    return allowed


class GroupedCausalAttention(torch.autograd.Function):
    """Causal attention of each example in a row as plain matmuls per key/value head, saving only the probabilities.

    The query heads sharing a key/value head are stacked position-major into one ``(L * heads/groups) x D``
    matrix, so grouped-query attention needs no repeated keys or values, and a block of positions is a
    block of rows: each example of a padding-free row, and each block of :func:`_blocks` within it,
    scores only the keys it can see. One call serves the whole row and autograd sees one node per layer.
    Every matmul operand is made contiguous once, in the forward pass, and kept for the backward: a
    block sliced out of a batch of matrices is not contiguous, and the matmul would copy it at every
    use (five copies per block in backward). The output is written straight into ``(batch, L, heads, D)``,
    the layout the output projection reads, so no further copy follows.
    Scores and probabilities stay in the compute dtype (softmax accumulates in fp32 internally, and the
    scores are already rounded by the matmul, as in transformers' eager attention): every pass over them
    costs as much as a matmul here, and fp32 copies fall out of cache past ~400 tokens.
    """

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float,
        edges: tuple[int, ...] | None = None,
        bands: Bands = (),
    ) -> torch.Tensor:
        """``(batch, heads, L, D)`` query, ``(batch, groups, L, D)`` key and value -> ``(batch, L, heads, D)``.

        ``bands``: keys some queries do not see on top of causality (see :data:`Bands`).
        """
        batch, heads, length, dim = query.shape
        groups = key.shape[1]
        per_group = heads // groups
        edges = edges or (0, length)
        with torch.autocast(query.device.type, enabled=False):
            masks = _block_masks(edges, bands, per_group, query.dtype, query.device)
            out = query.new_empty(batch, length, heads, dim)
            saved = []
            for (_, start, end), (mask, segments) in zip(_blocks(edges, bands), masks):
                rows = _stacked(query[:, :, start:end], groups)
                keys, values = _gathered(key, segments), _gathered(value, segments)
                # scale * q @ k.T + mask in one op, over the keys this block sees
                probs = torch.softmax(torch.baddbmm(mask, rows, keys.transpose(1, 2), alpha=scale), -1)
                _unstack(torch.bmm(probs, values), out[:, start:end], groups)
                saved += [rows, keys, values, probs]
        ctx.scale, ctx.edges, ctx.bands, ctx.groups = scale, edges, bands, groups
        ctx.segments = [segments for _, segments in masks]
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        groups = ctx.groups
        batch, length, heads, dim = grad_out.shape
        grad_query = grad_out.new_empty(batch, length, heads, dim)
        grad_key = grad_out.new_empty(batch * groups, length, dim)
        grad_value = torch.empty_like(grad_key)
        sums: tuple[torch.Tensor, torch.Tensor] | None = None
        # Backwards through each example: its last block sees all its keys (but a band's); earlier blocks
        # add into its sums, kept in fp32 when the example has several blocks.
        # the forward saved four tensors per block
        blocks = list(zip(_blocks(ctx.edges, ctx.bands), ctx.segments, *[iter(saved)] * 4))
        for (first, start, end), segments, rows, keys, values, probs in reversed(blocks):
            grad = _stacked(grad_out[:, start:end].transpose(1, 2), groups)
            part_value = torch.bmm(probs.transpose(1, 2), grad)
            grad_scores = torch._softmax_backward_data(torch.bmm(grad, values.transpose(1, 2)), probs, -1, probs.dtype)
            # The scale goes on the (rows x D) products rather than the larger (rows x keys) scores.
            _unstack(torch.bmm(grad_scores, keys).mul_(ctx.scale), grad_query[:, start:end], groups)
            part_key = torch.bmm(grad_scores.transpose(1, 2), rows).mul_(ctx.scale)
            whole = segments == ((first, end),)
            if sums is not None:
                _add_segments(sums, part_key, part_value, segments, first)
            elif start == first and whole:  # the example's only block
                grad_key[:, first:end], grad_value[:, first:end] = part_key, part_value
                continue
            else:  # the example's last block
                example_end = end
                if whole:
                    sums = (part_key.float(), part_value.float())
                else:
                    zeros = part_key.new_zeros(part_key.shape[0], end - first, dim, dtype=torch.float32)
                    sums = (zeros, zeros.clone())
                    _add_segments(sums, part_key, part_value, segments, first)
            if start == first:  # the example's first block: its sums are complete
                grad_key[:, first:example_end], grad_value[:, first:example_end] = sums
                sums = None
        shape = (batch, groups, length, dim)
        return grad_query.transpose(1, 2), grad_key.view(shape), grad_value.view(shape), None, None, None


def _add_segments(
    sums: tuple[torch.Tensor, torch.Tensor],
    part_key: torch.Tensor,
    part_value: torch.Tensor,
    segments: Segments,
    first: int,
) -> None:
    """Add a block's key and value gradients, one row per key it scored, into its example's sums."""
    offset = 0
    for low, high in segments:
        sums[0][:, low - first : high - first] += part_key[:, offset : offset + high - low]
        sums[1][:, low - first : high - first] += part_value[:, offset : offset + high - low]
        offset += high - low


def _stacked(heads_first: torch.Tensor, groups: int) -> torch.Tensor:
    """``(batch, heads, L, D)`` as contiguous ``(batch * groups, L * heads/groups, D)``: one matrix per key/value
    head, rows (position, head)."""
    batch, heads, length, dim = heads_first.shape
    return (
        heads_first.transpose(1, 2)
        .reshape(batch, length, groups, heads // groups, dim)
        .permute(0, 2, 1, 3, 4)
        .reshape(batch * groups, length * (heads // groups), dim)
        .contiguous()
    )


def _unstack(stacked: torch.Tensor, target: torch.Tensor, groups: int) -> None:
    """Copy ``(batch * groups, L * heads/groups, D)`` stacked position-major into ``target``, ``(batch, L, heads, D)``."""
    batch, length, heads, dim = target.shape
    target.view(batch, length, groups, heads // groups, dim).copy_(
        stacked.view(batch, groups, length, heads // groups, dim).transpose(1, 2)
    )


def _grouped_fits(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, longest: int, dropout: float, kwargs: dict[str, Any]
) -> bool:
    """Whether examples up to ``longest`` can take :class:`GroupedCausalAttention`: short, training on CPU, nothing it does not model."""
    return (
        torch.is_grad_enabled()
        and query.device.type == "cpu"  # measured against the CPU flash kernel; GPUs keep theirs
        and longest <= SHORT_EXAMPLE
        and dropout == 0.0
        and query.dtype == key.dtype == value.dtype
        and query.shape[1] % key.shape[1] == 0
        and kwargs.get("softcap") is None
    )


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
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``sdpa_attention_forward``, causal within each example when the batch is a flattened row.

    A row whose examples all fit :class:`GroupedCausalAttention` takes one call of it; otherwise each
    example takes its own call (grouped or SDPA's). ``hidden_key_bands`` (a shared-prefix batch, see
    :func:`factory.data.collator.sequence_batch`) hide keys from some queries on top of causality.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bands: Bands = kwargs.pop("hidden_key_bands", None) or ()
    capture: KeyCache | None = kwargs.pop("key_cache", None)
    prefix = kwargs.pop("prefix_keys", None)
    edges = _split_bounds(query, key, kwargs) if getattr(module, "is_causal", True) else None
    if edges is None:
        given = [
            name
            for name, value in (("hidden_key_bands", bands), ("key_cache", capture), ("prefix_keys", prefix))
            if value
        ]
        if given:
            raise ValueError(f"{' and '.join(given)} need a flattened batch (cu_seq_lens_q over one row)")
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if torch.is_autocast_enabled(query.device.type):
        # What autocast does to SDPA's inputs, done first so the grouped kernel sees one dtype: with
        # fp32 weights (full fine-tuning) RoPE leaves queries and keys in fp32 and values in bf16,
        # which sent every example to the slower flash kernel.
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = (t.to(dtype) if t.is_floating_point() else t for t in (query, key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if capture is not None:
        capture.layers[module] = (key.detach(), value.detach())
    if prefix is not None:
        window = kwargs.get("sliding_window")
        if window is not None:
            longest = max(end - start + b - a for (start, end), a, b in zip(prefix[1], edges, edges[1:]))
            if longest > window:
                raise ValueError(
                    f"prefix_keys continue {longest} positions, past the model's sliding window ({window})"
                )
        return _continued(module, query, key, value, edges, prefix, scale), None
    lengths = [b - a for a, b in zip(edges, edges[1:])]
    # Banded examples always take the grouped kernel when training on CPU: it masks per block, and
    # their blocks skip the causal upper half as for any long example.
    longest = max(lengths) if not bands else 0
    if _grouped_fits(query, key, value, longest, dropout, kwargs):
        return GroupedCausalAttention.apply(query, key, value, scale, tuple(edges), bands), None
    parts = []
    splits = [t.split(lengths, 2) for t in (query, key, value)]
    for first, q, k, v in zip(edges, *splits):
        mine = tuple(band for band in bands if first <= band[0] < first + q.shape[2])
        if not mine and _grouped_fits(q, k, v, q.shape[2], dropout, kwargs):
            parts.append(GroupedCausalAttention.apply(q, k, v, scale))
        elif mine:
            mask = band_mask(q.shape[2], first, mine, q.device)[None, None]
            parts.append(sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling)[0])
        else:
            parts.append(
                sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
            )
    return torch.cat(parts, dim=1), None


def shares_prefixes(model: Any) -> bool:
    """Whether ``model``'s attention is this module's, which honours a shared-prefix batch's ``hidden_key_bands``.

    Any other attention would ignore the bands and let a pair's rejected answer see its chosen one.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == VARLEN_SDPA


def register_varlen_sdpa() -> str:
    """Register the attention under :data:`VARLEN_SDPA` (masks as for ``sdpa``) and return that name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if VARLEN_SDPA not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
        AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA
