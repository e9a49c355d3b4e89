"""Padding-free SDPA: a flattened batch gives each example what it gets alone."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from factory.data.collator import FlatteningCollator
from factory.model import attention
from factory.model.attention import register_varlen_sdpa


def _rows():
    torch.manual_seed(0)
    return [torch.randint(3, 200, (n,)).tolist() for n in (7, 19, 1, 12)]


def test_flattened_batch_equals_each_example_alone(tiny_causal_lm, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa())
    rows = _rows()
    batch = FlatteningCollator(pad_token_id=0)([{"input_ids": r, "labels": r} for r in rows])
    calls = []
    from transformers.integrations import sdpa_attention

    real = sdpa_attention.sdpa_attention_forward

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"],
                     max_length_q=batch["max_length_q"], max_length_k=batch["max_length_k"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r])).logits[0] for r in rows])
    layers = model.config.num_hidden_layers
    assert calls[: len(rows) * layers] == [len(r) for r in rows] * layers  # one call per example, not per row
    assert torch.allclose(flat, alone, atol=1e-5)


def test_without_example_bounds_it_is_plain_sdpa(tiny_causal_lm):
    ours = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa())
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    ids = torch.tensor([_rows()[1], _rows()[1][::-1]])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits)


def test_a_sliding_window_shorter_than_an_example_keeps_the_mask():
    query = torch.zeros(1, 2, 10, 4)
    bounds = torch.tensor([0, 4, 10], dtype=torch.int32)
    assert attention._split_bounds(query, query, {"cu_seq_lens_q": bounds}) == [0, 4, 10]
    assert attention._split_bounds(query, query, {"cu_seq_lens_q": bounds, "sliding_window": 5}) is None
    assert attention._split_bounds(query, query[:, :, :6], {"cu_seq_lens_q": bounds}) is None  # a cache: keys differ
