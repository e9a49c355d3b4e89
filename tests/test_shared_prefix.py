"""Shared-prefix batches: a preference pair's prompt computed once gives each answer what it gets alone.

The layout (:func:`factory.data.collator.sequence_batch` with ``share_prefixes``) puts a pair as
``[prompt, chosen, rejected]`` in one flattened row; the attention hides the chosen answer from the
rejected one (``hidden_key_bands``). The oracles: the same examples with the prompt copied, through
plain SDPA attention, one example at a time.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from factory.data.collator import sequence_batch
from factory.model import attention
from factory.model.attention import register_varlen_sdpa, shares_prefixes

IGNORE = -100
MODEL_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _pair_rows():
    """Two pairs: prompt [1, 2], chosen [3, 4], rejected [5]; prompt [6], chosen [7], rejected [8, 9]."""
    return [
        [(0, [1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]), (2, [5], [5], 2)],
        [(1, [6, 7], [IGNORE, 7]), (3, [8, 9], [8, 9], 1)],
    ]


def test_a_shared_prefix_batch_holds_each_prompt_once_and_names_every_target():
    shared = sequence_batch(_pair_rows(), 0, packed=True, flatten=True, share_prefixes=True)
    assert shared["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert shared["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 1, 2]]  # rejected continues its prompt
    assert shared["sequence_ids"].tolist() == [[0, 0, 0, 0, 2, 1, 1, 3, 3]]
    assert shared["cu_seq_lens_q"].tolist() == [0, 5, 9]  # one group per pair
    assert shared["hidden_key_bands"] == ((4, 5, 2, 4), (7, 9, 6, 7))  # rejected does not see chosen
    # rejected's first token is predicted from its prompt's last position, not from chosen's end
    assert shared["target_index"].tolist() == [1, 2, 1, 5, 5, 7]
    assert shared["target_ids"].tolist() == [3, 4, 5, 7, 8, 9]
    assert shared["target_sequence"].tolist() == [0, 0, 2, 1, 3, 3]
    assert shared["labels"].tolist() == [[IGNORE, IGNORE, 3, 4, IGNORE, IGNORE, 7, IGNORE, 9]]  # no seam crossed

    padded = sequence_batch(_pair_rows(), 0, packed=True, flatten=True, share_prefixes=True, pad_to_multiple_of=4)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]]
    assert padded["cu_seq_lens_q"].tolist() == [0, 5, 9, 12]
    assert padded["sequence_ids"].tolist()[0][9:] == [-1, -1, -1]
    assert padded["target_index"].tolist() == shared["target_index"].tolist()


def test_layouts_that_cannot_share_copy_the_prompt():
    copied = sequence_batch(_pair_rows(), 0, packed=True)
    assert copied["input_ids"].tolist() == [[1, 2, 3, 4, 1, 2, 5], [6, 7, 6, 8, 9, 0, 0]]
    assert copied["labels"].tolist() == [
        [IGNORE, IGNORE, 3, 4, IGNORE, IGNORE, 5],
        [IGNORE, 7, IGNORE, 8, 9, IGNORE, IGNORE],
    ]
    unshared = sequence_batch(_pair_rows(), 0, packed=True, flatten=True)  # flattened, sharing not asked for
    assert unshared["input_ids"].tolist() == [[1, 2, 3, 4, 1, 2, 5, 6, 7, 6, 8, 9]]
    assert "hidden_key_bands" not in unshared


def test_an_example_sharing_a_prefix_must_follow_its_holder():
    for share in (True, False):
        with pytest.raises(ValueError, match="must follow one that holds it"):
            sequence_batch([[(0, [5], [5], 2)]], 0, packed=True, flatten=share, share_prefixes=share)


def _pairs(count=3, seed=0):
    """Random (prompt, chosen, rejected) token lists of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [(9, 6, 11), (4, 13, 3), (15, 2, 7), (6, 8, 8)][:count]
    return [[torch.randint(3, 200, (n,), generator=generator).tolist() for n in triple] for triple in lengths]


def _rows(pairs, share: bool):
    size = len(pairs)
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        held = (i, prompt + chosen, [IGNORE] * len(prompt) + chosen)
        rows.append([held, (size + i, rejected, rejected, len(prompt))])
    return rows


def _logps_shared(model, batch, count):
    """Summed log-probabilities per sequence, read at the explicit targets."""
    hidden = model(**{k: batch[k] for k in (*MODEL_KEYS, "hidden_key_bands")}).logits
    rows = hidden.flatten(0, 1)[batch["target_index"]].log_softmax(-1)
    picked = rows.gather(1, batch["target_ids"][:, None])[:, 0]
    return torch.zeros(count).index_add(0, batch["target_sequence"], picked)


def _logps_alone(model, pairs):
    """The oracle: every answer after its own copy of the prompt, one sequence per call, plain SDPA."""
    sequences = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    out = []
    for prompt, answer in sequences:
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        out.append(logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum())
    return torch.stack(out)


@pytest.fixture(scope="module")
def models(tiny_causal_lm):
    varlen = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    return varlen, plain


@pytest.mark.parametrize("grad", [True, False])  # training: the grouped kernel; inference: SDPA with a mask
def test_shared_prompt_log_probabilities_and_gradients_equal_each_answer_alone(models, grad, monkeypatch):
    varlen, plain = models
    assert shares_prefixes(varlen) and not shares_prefixes(plain)
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", 5)  # bands start inside blocks of the plain layout
    pairs = _pairs()
    batch = sequence_batch(_rows(pairs, True), 0, packed=True, flatten=True, share_prefixes=True)
    assert batch["input_ids"].shape[1] == sum(len(p) + len(c) + len(r) for p, c, r in pairs)
    with torch.set_grad_enabled(grad):
        ours = _logps_shared(varlen, batch, 2 * len(pairs))
        theirs = _logps_alone(plain, pairs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if grad:
        weights = torch.linspace(-1, 1, len(ours))
        grads = []
        for model, value in ((varlen, ours), (plain, theirs)):
            model.zero_grad()
            (value * weights).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def _dense_mask(length: int, groups: list[tuple[int, int]], hidden: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """True where a query attends: causal inside its group, minus the hidden ranges (written out per position)."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for start, end in groups:
        for q in range(start, end):
            allowed[q, start : q + 1] = True
    for q_start, q_end, k_start, k_end in hidden:
        allowed[q_start:q_end, k_start:k_end] = False
    return allowed


@pytest.mark.parametrize("block", [128, 4])
def test_banded_grouped_attention_equals_sdpa_under_the_dense_mask(block, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", block)
    torch.manual_seed(2)
    edges = (0, 21, 30)
    bands = ((14, 21, 6, 14), (27, 30, 24, 27))
    shapes = [(1, 6, 30, 8), (1, 2, 30, 8), (1, 2, 30, 8)]
    q, k, v = (torch.randn(s, requires_grad=True) for s in shapes)
    weights = torch.linspace(-1, 1, 30 * 6 * 8).view(1, 30, 6, 8)

    def run(fn):
        q.grad = k.grad = v.grad = None
        out = fn()
        (out * weights).sum().backward()
        return [out.detach(), q.grad, k.grad, v.grad]

    ours = run(lambda: attention.GroupedCausalAttention.apply(q, k, v, 0.3, edges, bands))
    mask = _dense_mask(30, [(0, 21), (21, 30)], list(bands))
    theirs = run(
        lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=True, scale=0.3
        ).transpose(1, 2)
    )
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_a_bands_hidden_keys_are_left_out_of_its_blocks_not_scored_and_masked():
    """The rejected answer's blocks score the prompt and their own answer only: no work on the chosen answer's keys."""
    edges, bands = (0, 21, 30), ((14, 21, 6, 14),)
    blocks = attention._blocks(edges, bands)
    masks = attention._block_masks(edges, bands, 3, torch.float32, torch.device("cpu"))
    assert [block for block, _ in zip(blocks, masks)] == [(0, 0, 14), (0, 14, 21), (21, 21, 30)]
    widths = [(segments, tuple(mask.shape)) for mask, segments in masks]
    assert widths == [(((0, 14),), (14 * 3, 14)), (((0, 6), (14, 21)), (7 * 3, 13)), (((21, 30),), (9 * 3, 9))]
    # The kept columns are the causal mask's: the band's queries see keys 0-5 and themselves causally.
    banded = masks[1][0].view(7, 3, 13)[:, 0]
    assert torch.equal(banded[:, :6], torch.zeros(7, 6))
    assert torch.equal(banded[:, 6:].isinf(), torch.ones(7, 7).triu(1).bool())


def test_bands_need_a_flattened_row(models):
    varlen, _ = models
    with pytest.raises(ValueError, match="hidden_key_bands need a flattened batch"):
        varlen(input_ids=torch.tensor([[5, 6, 7]]), hidden_key_bands=((2, 3, 1, 2),))
