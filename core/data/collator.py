"""Collators: tokenized rows -> tensors for one batch.

Padding goes to the longest row of the batch (optionally up to a multiple), labels pad with
``IGNORE_INDEX``. The work is per row with numpy, never per token in Python. Written here
because the transformers collators pad only the tokenizer's own columns (``tokenizer.pad``):
packed rows need their ``position_ids`` continued, sequence batches their example ids.

Batch layouts:
- padded (``PaddingCollator``): ``input_ids``, ``attention_mask``, ``labels``.
- packed (``PackedCollator``): ``input_ids``, ``labels``, ``position_ids`` and no
  ``attention_mask``; the padding tail is one more block with its own positions, so transformers
  sees the restarts and keeps attention inside each example (sdpa/eager, with ``use_cache`` off).
- flattened (``FlatteningCollator``, padding-free, for FlashAttention's varlen kernels): the
  whole batch as ONE row with ``position_ids`` and ``cu_seq_lens_q/k``, ``max_length_q/k``.
- whole sequences (``sequence_batch``, for losses over sequences such as preference pairs):
  several examples per row with restarting positions, and ``sequence_ids`` naming each token's
  example. Which collator a data kind uses is the kind's choice (``factory.data.kinds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from factory.data.tokenize import IGNORE_INDEX
from factory.errors import ConfigError

Features = Sequence[dict[str, Any]]


def _target_length(longest: int, multiple: int | None) -> int:
    return -(-longest // multiple) * multiple if multiple else longest


def pad(rows: Sequence[Sequence[int]], value: int, length: int) -> np.ndarray:
    """Right-pad ragged integer rows into a ``(len(rows), length)`` int64 array."""
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _lengths(rows: Sequence[Sequence[int]]) -> np.ndarray:
    return np.fromiter(map(len, rows), np.int64, len(rows))


def _padded_batch(
    ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int, multiple: int | None
) -> dict[str, torch.Tensor]:
    lengths = _lengths(ids)
    length = _target_length(int(lengths.max()), multiple)
    return {
        "input_ids": torch.from_numpy(pad(ids, pad_id, length)),
        "attention_mask": torch.from_numpy((np.arange(length) < lengths[:, None]).astype(np.int64)),
        "labels": torch.from_numpy(pad(labels, IGNORE_INDEX, length)),
    }


@dataclass
class PaddingCollator:
    """Supervised or pre-training rows, one example each, padded with an attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        return _padded_batch(
            [f["input_ids"] for f in features],
            [f["labels"] for f in features],
            self.pad_token_id,
            self.pad_to_multiple_of,
        )


@dataclass
class PackedCollator:
    """Packed rows: position ids carry the example boundaries, so there is no attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        lengths = _lengths(ids)
        length = _target_length(int(lengths.max()), self.pad_to_multiple_of)
        positions = pad([f["position_ids"] for f in features], 0, length)
        tail = np.arange(length) - lengths[:, None]  # the padding restarts at 0: a block of its own
        positions = np.where(tail >= 0, tail, positions)
        return {
            "input_ids": torch.from_numpy(pad(ids, self.pad_token_id, length)),
            "labels": torch.from_numpy(pad([f["labels"] for f in features], IGNORE_INDEX, length)),
            "position_ids": torch.from_numpy(positions),
        }


@dataclass
class FlatteningCollator:
    """Padding-free: the batch as one row; each example's bounds given as FlashAttention varlen arguments.

    Like transformers' ``DataCollatorWithFlattening``, but it keeps the restarts inside rows that
    are already packed (that one restarts positions per row only, so packed examples would see
    each other) and builds positions with numpy instead of a Python loop per token.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Features) -> dict[str, Any]:
        ids = [np.asarray(f["input_ids"], dtype=np.int64) for f in features]
        lengths = _lengths(ids)
        row_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        if all("position_ids" in f for f in features):
            positions = np.concatenate([np.asarray(f["position_ids"], dtype=np.int64) for f in features])
        else:
            positions = np.arange(int(lengths.sum())) - np.repeat(row_starts, lengths)
        labels = np.concatenate([np.asarray(f["labels"], dtype=np.int64) for f in features])
        flat = np.concatenate(ids)
        extra = _target_length(len(flat), self.pad_to_multiple_of) - len(flat)
        if extra:
            flat = np.concatenate((flat, np.full(extra, self.pad_token_id)))
            labels = np.concatenate((labels, np.full(extra, IGNORE_INDEX)))
            positions = np.concatenate((positions, np.arange(extra)))
        starts = np.flatnonzero(positions == 0)
        labels[starts] = IGNORE_INDEX  # no example predicts the first token of the next one
        cu_seq_lens = torch.tensor(np.append(starts, len(flat)), dtype=torch.int32)
        max_length = int(np.diff(cu_seq_lens.numpy()).max())
        return {
            "input_ids": torch.from_numpy(flat)[None],
            "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(positions)[None],
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length,
            "max_length_k": max_length,
        }


# (sequence id, input ids, labels[, shared]): ``shared`` > 0 makes the example continue the first ``shared``
# tokens of its row's last example with shared == 0 (a pair's rejected answer after the prompt that the
# chosen one already holds); its ids and labels are only what follows them.
Example = tuple[int, Sequence[int], Sequence[int]] | tuple[int, Sequence[int], Sequence[int], int]


def _shared(example: Example) -> int:
    return example[3] if len(example) > 3 else 0


def _materialized(row: Sequence[Example]) -> list[tuple[int, Sequence[int], Sequence[int]]]:
    """``row`` with every shared prefix copied into its example: the layout of models that cannot share."""
    out, owner = [], None
    for example in row:
        sid, ids, labels = example[:3]
        shared = _shared(example)
        if shared:
            if owner is None:
                raise ValueError("an example that shares a prefix must follow one that holds it")
            ids = list(owner[1][:shared]) + list(ids)
            labels = [IGNORE_INDEX] * shared + list(labels)
        else:
            owner = example
        out.append((sid, ids, labels))
    return out


def sequence_batch(
    rows: Sequence[Sequence[Example]],
    pad_id: int,
    *,
    packed: bool,
    flatten: bool = False,
    pad_to_multiple_of: int | None = None,
    share_prefixes: bool = False,
) -> dict[str, Any]:
    """Examples grouped in rows -> one batch, plus ``sequence_ids`` (the example of each token, -1 for padding).

    For losses over whole sequences (preference pairs, KTO completions): ``packed`` puts each
    row's examples one after the other with restarting positions (no padding inside a row; the
    model keeps attention per example), ``flatten`` further makes the batch one padding-free row
    with FlashAttention's varlen arguments, and otherwise each example is its own padded row
    (for models that cannot take restarting positions). A label at an example's first token is
    dropped, so no example predicts across a seam.

    Examples that share a prefix (see :data:`Example`) hold a copy of it, unless ``share_prefixes``
    and ``flatten``: then the prefix is computed once (see :func:`_shared_prefix_batch`), for a model
    whose attention honours ``hidden_key_bands`` (:func:`factory.model.attention.shares_prefixes`).
    """
    if share_prefixes and flatten:
        return _shared_prefix_batch(rows, pad_id, pad_to_multiple_of)
    rows = [_materialized(row) for row in rows]
    examples = [example for row in rows for example in row]
    if not packed:
        batch = _padded_batch(
            [ids for _, ids, _ in examples], [labels for _, _, labels in examples], pad_id, pad_to_multiple_of
        )
        seq = np.asarray([sid for sid, _, _ in examples], dtype=np.int64)[:, None]
        batch["sequence_ids"] = torch.from_numpy(np.where(batch["attention_mask"].numpy() > 0, seq, -1))
        return batch
    features, sequence_ids = [], []
    for row in rows:
        lengths = [len(ids) for _, ids, _ in row]
        labels = np.concatenate([np.asarray(labels, dtype=np.int64) for _, _, labels in row])
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        labels[starts] = IGNORE_INDEX
        features.append(
            {
                "input_ids": np.concatenate([np.asarray(ids, dtype=np.int64) for _, ids, _ in row]),
                "labels": labels,
                "position_ids": np.concatenate([np.arange(n) for n in lengths]),
            }
        )
        sequence_ids.append(np.repeat([sid for sid, _, _ in row], lengths))
    collate = FlatteningCollator if flatten else PackedCollator
    batch = collate(pad_id, pad_to_multiple_of)(features)
    shape = batch["input_ids"].shape
    if flatten:
        flat = np.concatenate(sequence_ids)
        ids = np.full(shape[1], -1, dtype=np.int64)
        ids[: len(flat)] = flat
        batch["sequence_ids"] = torch.from_numpy(ids)[None]
    else:
        batch["sequence_ids"] = torch.from_numpy(pad(sequence_ids, -1, shape[1]))
    return batch


def pad_token_id(tokenizer: Any) -> int:
    """The id padding uses: the tokenizer's pad token, else its eos (padding never trains)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ConfigError(
        f"tokenizer '{getattr(tokenizer, 'name_or_path', tokenizer)}' has neither a pad nor an eos token; "
        "set tokenizer.pad_token before training"
    )


def _shared_prefix_batch(rows: Sequence[Sequence[Example]], pad_id: int, multiple: int | None) -> dict[str, Any]:
    """The batch as one row in which an example continuing a shared prefix does not repeat it.

    A group is an example and those that continue it: ``[prompt, chosen, rejected]`` for a pair,
    the rejected answer's positions continuing from the prompt's end. ``cu_seq_lens_q/k`` bound the
    groups; ``hidden_key_bands`` lists ``(query start, query end, key start, key end)``: queries of a
    continuing example must not see the keys between the shared prefix and itself (the chosen
    answer). Since the token before a continuing example is not its predecessor, the trained
    targets are given explicitly: ``target_index`` (the position whose output predicts each target),
    ``target_ids`` and ``target_sequence``; ``labels`` keeps the per-position form for the rest, with
    every seam dropped.
    """
    ids, positions, labels, owners, predictors = [], [], [], [], []
    edges, bands = [0], []
    offset = group = 0
    for row in rows:
        if row and _shared(row[0]):
            raise ValueError("an example that shares a prefix must follow one that holds it")
        for example in row:
            sid, tokens, marks = example[:3]
            shared, length = _shared(example), len(tokens)
            if not shared and offset:
                edges.append(offset)
            if not shared:
                group = offset
            predictor = offset - 1 + np.arange(length)
            predictor[0] = group + shared - 1 if shared else -1
            if shared:
                bands.append((offset, offset + length, group + shared, offset))
            ids.append(np.asarray(tokens, dtype=np.int64))
            positions.append(np.arange(shared, shared + length))
            labels.append(np.asarray(marks, dtype=np.int64))
            owners.append(np.full(length, sid, dtype=np.int64))
            predictors.append(predictor)
            offset += length
    flat_labels, flat_predictors, flat_owners = (np.concatenate(x) for x in (labels, predictors, owners))
    trained = (flat_labels != IGNORE_INDEX) & (flat_predictors >= 0)
    seams = np.cumsum([0] + [len(x) for x in ids[:-1]])
    per_position = flat_labels.copy()
    per_position[seams] = IGNORE_INDEX  # no shifted reading ever crosses into another example
    extra = _target_length(offset, multiple) - offset
    if extra:
        edges.append(offset)
        ids.append(np.full(extra, pad_id, dtype=np.int64))
        positions.append(np.arange(extra))
        per_position = np.concatenate((per_position, np.full(extra, IGNORE_INDEX)))
        flat_owners = np.concatenate((flat_owners, np.full(extra, -1)))
    edges.append(offset + extra)
    cu_seq_lens = torch.tensor(edges, dtype=torch.int32)
    max_length = int(np.diff(edges).max())
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids))[None],
        "labels": torch.from_numpy(per_position)[None],
        "position_ids": torch.from_numpy(np.concatenate(positions))[None],
        "sequence_ids": torch.from_numpy(flat_owners)[None],
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
        "hidden_key_bands": tuple(bands),
        "target_index": torch.from_numpy(flat_predictors[trained]),
        "target_ids": torch.from_numpy(flat_labels[trained]),
        "target_sequence": torch.from_numpy(flat_owners[: len(flat_predictors)][trained]),
    }
