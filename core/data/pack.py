"""Packing: several tokenized examples in one row of at most ``cutoff_len`` tokens.

Each packed example keeps its own positions (``position_ids`` restart at 0) and its first label
is ``IGNORE_INDEX``, so the last token of one example never learns to predict the first token of
the next. Attention stays inside each example because transformers reads the restarts in
``position_ids``: for sdpa/eager it builds the block-diagonal causal mask itself when the batch
has no ``attention_mask`` and no KV cache (the Trainer runs with ``use_cache=False``); for
FlashAttention the flattening collator passes the varlen ``cu_seq_lens``. The contamination test
in tests/test_packing.py proves both against each example's loss alone.

Written here because the bin packing in TRL is not a core dependency and ``datasets`` has none.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from factory.data.tokenize import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins of total length <= ``capacity`` (longest first, tightest bin).

    O(n log n) with a sorted list of the bins' free space; an example longer than ``capacity``
    gets a bin of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in order:
        size = lengths[i]
        k = bisect.bisect_left(free, (size, -1))
        if k == len(free):
            bins.append([i])
            space, b = capacity - size, len(bins) - 1
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            space -= size
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


def _restarts(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of consecutive pieces and the position of every token within its piece."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    positions = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    return starts, positions


def pack_examples(batch: dict[str, list], *, cutoff_len: int) -> dict[str, list]:
    """``datasets.map`` function (batched): supervised rows -> packed rows with ``position_ids``."""
    ids = [np.asarray(x, dtype=np.int32) for x in batch["input_ids"]]
    labels = [np.asarray(x, dtype=np.int32) for x in batch["labels"]]
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in best_fit_decreasing([len(x) for x in ids], cutoff_len):
        lengths = np.fromiter((len(ids[i]) for i in members), np.int64, len(members))
        starts, positions = _restarts(lengths)
        row_labels = np.concatenate([labels[i] for i in members])
        row_labels[starts] = IGNORE_INDEX
        out["input_ids"].append(np.concatenate([ids[i] for i in members]))
        out["labels"].append(row_labels)
        out["position_ids"].append(positions.astype(np.int32))
    return out


def chunk_texts(batch: dict[str, list], *, cutoff_len: int, concatenate: bool) -> dict[str, list]:
    """``datasets.map`` function (batched) for pre-training rows.

    ``concatenate`` (packing): the texts of the batch form one token stream cut into
    ``cutoff_len`` rows; positions restart at every text, whose first token is not a target.
    Otherwise each text is cut into rows of its own. No token is ever dropped.
    """
    docs = [np.asarray(x, dtype=np.int32) for x in batch["input_ids"]]
    out: dict[str, list] = {"input_ids": [], "labels": []}
    if not docs:
        return out | ({"position_ids": []} if concatenate else {})
    if not concatenate:
        for doc in docs:
            pieces = np.split(doc, range(cutoff_len, len(doc), cutoff_len))
            out["input_ids"] += pieces
            out["labels"] += pieces
        return out
    stream = np.concatenate(docs)
    restart = np.zeros(len(stream), dtype=bool)
    restart[_restarts(np.fromiter(map(len, docs), np.int64, len(docs)))[0]] = True
    restart[::cutoff_len] = True
    piece = np.cumsum(restart) - 1
    positions = np.arange(len(stream)) - np.flatnonzero(restart)[piece]
    labels = np.where(restart, IGNORE_INDEX, stream).astype(np.int32)
    rows = range(cutoff_len, len(stream), cutoff_len)
    out["input_ids"] = np.split(stream, rows)
    out["labels"] = np.split(labels, rows)
    out["position_ids"] = np.split(positions.astype(np.int32), rows)
    return out


def packed_features(with_positions: bool) -> Any:
    """``datasets.Features`` of packed/chunked rows."""
    from datasets import Features, List, Value

    names = ("input_ids", "labels") + (("position_ids",) if with_positions else ())
    return Features({name: List(Value("int32")) for name in names})
