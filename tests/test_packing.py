"""Packing, collators and the contamination test: a packed example's loss equals its loss alone."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from factory.data.collator import FlatteningCollator, PackedCollator, PaddingCollator
from factory.data.kinds import PRETRAIN, SUPERVISED
from factory.data.pack import best_fit_decreasing, chunk_texts, pack_examples
from factory.data.tokenize import IGNORE_INDEX


def _examples(n: int, seed: int = 0, vocab: int = 300) -> list[dict[str, list[int]]]:
    """Random supervised rows: a prompt part (labels -100) then a response part (labels = ids)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, response = rng.randint(1, 9), rng.randint(1, 9)
        ids = [rng.randrange(3, vocab) for _ in range(prompt + response)]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def _columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _rows(columns: dict[str, list]) -> list[dict]:
    """Rows as ``datasets`` hands them to a collator (plain lists)."""
    return [{k: np.asarray(v).tolist() for k, v in zip(columns, values)} for values in zip(*columns.values())]


# -- bin packing ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_decreasing_is_a_valid_tight_packing(seed: int) -> None:
    rng = random.Random(seed)
    capacity = 64
    lengths = [rng.randint(1, capacity) for _ in range(300)]
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # Near the lower bound total / capacity (decreasing fits are within 11/9 of optimal).
    lower = math.ceil(sum(lengths) / capacity)
    assert len(bins) <= 1.1 * lower + 2
    # Best fit never leaves two bins that could be merged.
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert loads[0] + loads[1] > capacity


def test_pack_examples_restarts_positions_and_masks_boundaries() -> None:
    rows = _examples(40)
    packed = _rows(pack_examples(_columns(rows), cutoff_len=32))
    assert len(packed) < len(rows)
    seen = []
    for row in packed:
        ids, labels, positions = (np.asarray(row[k]) for k in ("input_ids", "labels", "position_ids"))
        assert len(ids) == len(labels) == len(positions) <= 32
        starts = np.flatnonzero(positions == 0)
        assert starts[0] == 0
        assert (labels[starts] == IGNORE_INDEX).all()  # no example predicts the next one's first token
        for s, e in zip(starts, list(starts[1:]) + [len(ids)]):
            assert (positions[s:e] == np.arange(e - s)).all()
            seen.append((tuple(ids[s:e]), tuple(labels[s + 1 : e])))
    original = sorted((tuple(r["input_ids"]), tuple(r["labels"][1:])) for r in rows)
    assert sorted(seen) == original


def test_pretrain_chunks_concatenate_back_to_the_token_stream() -> None:
    rng = random.Random(1)
    docs = [[rng.randrange(3, 100) for _ in range(rng.randint(1, 50))] + [2] for _ in range(30)]
    stream = [t for doc in docs for t in doc]
    doc_starts = set(np.cumsum([0] + [len(d) for d in docs[:-1]]).tolist())

    packed = _rows(chunk_texts({"input_ids": docs}, cutoff_len=16, concatenate=True))
    assert [t for row in packed for t in row["input_ids"]] == stream
    assert all(len(row["input_ids"]) == 16 for row in packed[:-1])
    offset = 0
    for row in packed:
        for i, (token, label, pos) in enumerate(zip(row["input_ids"], row["labels"], row["position_ids"])):
            restart = offset + i in doc_starts or i == 0
            assert (pos == 0) == restart
            assert label == (IGNORE_INDEX if restart else token)
        offset += len(row["input_ids"])

    separate = _rows(chunk_texts({"input_ids": docs}, cutoff_len=16, concatenate=False))
    assert [t for row in separate for t in row["input_ids"]] == stream
    assert all(len(row["input_ids"]) <= 16 for row in separate)
    assert len(separate) == sum(math.ceil(len(d) / 16) for d in docs)


# -- collators --------------------------------------------------------------------------------


def test_padding_collator_pads_to_longest_and_multiple() -> None:
    rows = _examples(3, seed=2)
    longest = max(len(r["input_ids"]) for r in rows)
    batch = PaddingCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape == (3, longest)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert batch["labels"][i].tolist() == row["labels"] + [IGNORE_INDEX] * (longest - n)
        assert (batch["input_ids"][i, n:] == 0).all()
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= longest


def test_packed_collator_gives_the_padding_its_own_block() -> None:
    packed = _rows(pack_examples(_columns(_examples(12, seed=3)), cutoff_len=24))
    batch = PackedCollator(pad_token_id=0, pad_to_multiple_of=4)(packed)
    assert "attention_mask" not in batch
    length = batch["input_ids"].shape[1]
    for i, row in enumerate(packed):
        n = len(row["input_ids"])
        assert batch["position_ids"][i].tolist() == row["position_ids"] + list(range(length - n))
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()


def test_flattening_collator_varlen_arguments() -> None:
    rows = _examples(4, seed=4)
    batch = FlatteningCollator(pad_token_id=0)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["cu_seq_lens_q"].tolist() == np.cumsum([0] + lengths).tolist()
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == max(lengths)
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]


def test_collator_choices_of_the_core_kinds(tiny_tokenizer) -> None:
    plain = dict(flatten=False, restarts=True)
    assert isinstance(SUPERVISED.collator(tiny_tokenizer, packing=False, **plain), PaddingCollator)
    assert isinstance(PRETRAIN.collator(tiny_tokenizer, packing=True, **plain), PackedCollator)
    assert isinstance(
        SUPERVISED.collator(tiny_tokenizer, packing=True, flatten=True, restarts=True), FlatteningCollator
    )


# -- contamination: a packed example's loss equals its loss alone --------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_causal_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_causal_lm)


def _model(path, attn: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    model.config.use_cache = False  # what the Trainer does (TrainingArguments.use_cache=False)
    return model.eval()


def _token_losses(model, batch: dict) -> torch.Tensor:
    """Per-target-token loss [rows, length]; position t holds the loss of predicting labels[t]."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return torch.nn.functional.pad(losses, (1, 0))


def _alone_losses(model, rows: list[dict]) -> list[float]:
    out = []
    for row in rows:
        batch = PaddingCollator(pad_token_id=0)([row])
        losses = _token_losses(model, {k: v for k, v in batch.items() if k != "attention_mask"})
        out.append(losses[0][batch["labels"][0] != IGNORE_INDEX].mean().item())
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_loss_alone(tiny_causal_lm, attn: str) -> None:
    torch.set_num_threads(2)
    model = _model(tiny_causal_lm, attn)
    rows = _examples(10, seed=5, vocab=model.config.vocab_size)
    for row in rows:  # make every example train from its second token on, so every loss is defined
        row["labels"] = [IGNORE_INDEX] + row["input_ids"][1:]
    alone = dict(zip(map(lambda r: tuple(r["input_ids"]), rows), _alone_losses(model, rows)))

    packed = _rows(pack_examples(_columns(rows), cutoff_len=40))
    assert len(packed) < len(rows) and any(len(np.flatnonzero(np.asarray(p["position_ids"]) == 0)) > 2 for p in packed)
    batch = PackedCollator(pad_token_id=0)(packed)  # several packed rows of different lengths: padded too
    losses = _token_losses(model, batch)
    checked = 0
    for i, row in enumerate(packed):
        positions = np.asarray(row["position_ids"])
        starts = list(np.flatnonzero(positions == 0)) + [len(positions)]
        for s, e in zip(starts, starts[1:]):
            key = tuple(row["input_ids"][s:e])
            packed_loss = losses[i, s + 1 : e].mean().item()
            assert packed_loss == pytest.approx(alone[key], abs=1e-4), f"example {key} contaminated ({attn})"
            checked += 1
    assert checked == len(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_equals_padded_batch(tiny_causal_lm, attn: str) -> None:
    torch.set_num_threads(2)
    model = _model(tiny_causal_lm, attn)
    rows = _examples(6, seed=6, vocab=model.config.vocab_size)
    padded = PaddingCollator(pad_token_id=0)(rows)
    flat = FlatteningCollator(pad_token_id=0)(rows)
    with torch.no_grad():
        loss_padded = model(**padded).loss.item()
        loss_flat = model(**flat).loss.item()
    assert loss_flat == pytest.approx(loss_padded, abs=1e-5)
    per_padded = _token_losses(model, padded)
    per_flat = _token_losses(model, flat)[0]
    offset = 0
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert torch.allclose(per_flat[offset + 1 : offset + n], per_padded[i, 1:n], atol=1e-4)
        offset += n


def test_without_restarting_positions_examples_would_leak(tiny_causal_lm) -> None:
    """The oracle is sharp: the same packed rows with plain positions do change the losses."""
    model = _model(tiny_causal_lm, "sdpa")
    rows = _examples(4, seed=7, vocab=model.config.vocab_size)
    packed = _rows(pack_examples(_columns(rows), cutoff_len=80))
    batch = PackedCollator(pad_token_id=0)(packed[:1])
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    assert not torch.allclose(_token_losses(model, batch), _token_losses(model, leaky), atol=1e-3)
