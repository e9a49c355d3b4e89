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


Example = tuple[int, Sequence[int], Sequence[int]]  # (sequence id, input ids, labels)


def sequence_batch(
    rows: Sequence[Sequence[Example]],
    pad_id: int,
    *,
    packed: bool,
    flatten: bool = False,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Examples grouped in rows -> one batch, plus ``sequence_ids`` (the example of each token, -1 for padding).

    For losses over whole sequences (preference pairs, KTO completions): ``packed`` puts each
    row's examples one after the other with restarting positions (no padding inside a row; the
    model keeps attention per example), ``flatten`` further makes the batch one padding-free row
    with FlashAttention's varlen arguments, and otherwise each example is its own padded row
    (for models that cannot take restarting positions). A label at an example's first token is
    dropped, so no example predicts across a seam.
    """
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
