"""Padding-free SDPA: a flattened batch gives each example what it gets alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from factory.data.collator import FlatteningCollator
from factory.model import attention
from factory.model.attention import register_varlen_sdpa


def _rows():
    torch.manual_seed(0)
    return [torch.randint(3, 200, (n,)).tolist() for n in (7, 19, 1, 12)]


def test_flattened_batch_equals_each_example_alone(tiny_causal_lm, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
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
        flat = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            cu_seq_lens_q=batch["cu_seq_lens_q"],
            cu_seq_lens_k=batch["cu_seq_lens_k"],
            max_length_q=batch["max_length_q"],
            max_length_k=batch["max_length_k"],
        ).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r])).logits[0] for r in rows])
    layers = model.config.num_hidden_layers
    assert calls[: len(rows) * layers] == [len(r) for r in rows] * layers  # one call per example, not per row
    assert torch.allclose(flat, alone, atol=1e-5)


def test_without_example_bounds_it_is_plain_sdpa(tiny_causal_lm):
    ours = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    ids = torch.tensor([_rows()[1], _rows()[1][::-1]])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        assert torch.equal(
            ours(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits
        )


def test_a_sliding_window_shorter_than_an_example_keeps_the_mask():
    query = torch.zeros(1, 2, 10, 4)
    bounds = torch.tensor([0, 4, 10], dtype=torch.int32)
    assert attention._split_bounds(query, query, {"cu_seq_lens_q": bounds}) == [0, 4, 10]
    assert attention._split_bounds(query, query, {"cu_seq_lens_q": bounds, "sliding_window": 5}) is None
    assert attention._split_bounds(query, query[:, :, :6], {"cu_seq_lens_q": bounds}) is None  # a cache: keys differ


def _qkv(length, dtype, heads=6, groups=2, dim=8):
    torch.manual_seed(1)
    shapes = [(1, heads, length, dim), (1, groups, length, dim), (1, groups, length, dim)]
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def _with_grads(fn, q, k, v):
    out = fn(q, k, v)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype)
    q.grad = k.grad = v.grad = None
    (out * weights).sum().backward()
    return [out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=0.3)


@pytest.mark.parametrize("block", [128, 5])  # one block; five blocks of 4-5 positions
def test_grouped_attention_matches_sdpa_forward_and_backward(block, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", block)
    q, k, v = _qkv(23, torch.float32)
    ours = _with_grads(lambda *t: attention.GroupedCausalAttention.apply(*t, 0.3).transpose(1, 2), q, k, v)
    reference = _with_grads(_sdpa, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.parametrize("block", [128, 9])
def test_grouped_attention_in_bf16_is_within_bf16_rounding_of_sdpa(block, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", block)
    q, k, v = _qkv(40, torch.bfloat16)
    ours = _with_grads(lambda *t: attention.GroupedCausalAttention.apply(*t, 0.3).transpose(1, 2), q, k, v)
    reference = _with_grads(_sdpa, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert (a - b).abs().max() <= 0.02 * b.abs().max(), name


def _grads(model, **inputs):
    model.zero_grad()
    model(**inputs).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_training_takes_grouped_attention_for_short_examples_only(tiny_causal_lm, monkeypatch):
    from transformers.integrations import sdpa_attention

    model = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    rows = _rows()  # lengths 7, 19, 1, 12
    monkeypatch.setattr(attention, "SHORT_EXAMPLE", 12)
    monkeypatch.setattr(attention, "_CAUSAL", {})
    grouped, sdpa = [], []
    real_apply, real_sdpa = attention.GroupedCausalAttention.apply, sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(
        attention.GroupedCausalAttention, "apply", lambda q, *a: grouped.append(q.shape[2]) or real_apply(q, *a)
    )
    monkeypatch.setattr(
        sdpa_attention,
        "sdpa_attention_forward",
        lambda m, q, *a, **kw: sdpa.append(q.shape[2]) or real_sdpa(m, q, *a, **kw),
    )

    batch = FlatteningCollator(pad_token_id=0)([{"input_ids": r, "labels": r} for r in rows])
    flat = _grads(model, **{k: v for k, v in batch.items() if k != "attention_mask"})
    layers = model.config.num_hidden_layers
    assert grouped[:3] == [7, 1, 12] and sdpa[:1] == [19] and len(grouped) == 3 * layers
    # The same gradients as plain transformers on the padded batch.
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=0)
    mask = torch.arange(padded.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]
    reference = _grads(plain, input_ids=padded, attention_mask=mask.long(), labels=padded.masked_fill(~mask, -100))
    assert torch.allclose(flat, reference, atol=1e-5)


def test_a_row_of_short_examples_takes_one_grouped_call_per_layer(tiny_causal_lm, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    rows = _rows()  # lengths 7, 19, 1, 12
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", 6)  # several blocks in the longer examples
    calls = []
    real_apply = attention.GroupedCausalAttention.apply
    monkeypatch.setattr(
        attention.GroupedCausalAttention,
        "apply",
        lambda q, k, v, scale, *rest: calls.append(rest[0]) or real_apply(q, k, v, scale, *rest),
    )

    batch = FlatteningCollator(pad_token_id=0)([{"input_ids": r, "labels": r} for r in rows])
    flat = _grads(model, **{k: v for k, v in batch.items() if k != "attention_mask"})
    assert calls == [(0, 7, 26, 27, 39)] * model.config.num_hidden_layers
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=0)
    mask = torch.arange(padded.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]
    reference = _grads(plain, input_ids=padded, attention_mask=mask.long(), labels=padded.masked_fill(~mask, -100))
    assert torch.allclose(flat, reference, atol=1e-5)


def test_fp32_weights_under_autocast_take_the_grouped_kernel(tiny_causal_lm, monkeypatch):
    """Full fine-tuning: fp32 weights under bf16 autocast leave RoPE'd queries and keys in fp32 and values in bf16.
    They are cast as autocast casts SDPA's inputs, so the grouped kernel still runs, and the gradients stay within
    bf16 rounding of plain transformers' SDPA under the same autocast."""
    model = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    rows = _rows()
    dtypes = []
    real_apply = attention.GroupedCausalAttention.apply
    monkeypatch.setattr(
        attention.GroupedCausalAttention,
        "apply",
        lambda q, k, v, *rest: dtypes.append((q.dtype, k.dtype, v.dtype)) or real_apply(q, k, v, *rest),
    )
    batch = FlatteningCollator(pad_token_id=0)([{"input_ids": r, "labels": r} for r in rows])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flat = _grads(model, **{k: v for k, v in batch.items() if k != "attention_mask"})
    assert dtypes == [(torch.bfloat16,) * 3] * model.config.num_hidden_layers
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32, attn_implementation="sdpa")
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=0)
    mask = torch.arange(padded.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _grads(plain, input_ids=padded, attention_mask=mask.long(), labels=padded.masked_fill(~mask, -100))
    assert flat.dtype == torch.float32
    assert torch.allclose(flat, reference, atol=2e-2, rtol=5e-2)
    assert torch.nn.functional.cosine_similarity(flat, reference, dim=0) > 0.999


def test_a_continuation_of_captured_prefixes_equals_the_whole_sequences(tiny_causal_lm):
    """key_cache keeps a flattened forward's keys and values; prefix_keys continues some of its examples from a
    prefix of each, computing only the new tokens: their hidden states equal those of each whole sequence alone."""
    from factory.model.attention import KeyCache

    model = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, dtype=torch.float32, attn_implementation=register_varlen_sdpa()
    )
    decoder = model.model
    rows = _rows()  # lengths 7, 19, 1, 12
    batch = FlatteningCollator(pad_token_id=0)([{"input_ids": r, "labels": r} for r in rows])
    inputs = {k: v for k, v in batch.items() if k not in ("attention_mask", "labels")}
    cache = KeyCache()
    with torch.no_grad():
        decoder(**inputs, key_cache=cache)
    assert len(cache.layers) == model.config.num_hidden_layers
    # continue the first 4 tokens of example 0 and the first 10 of example 1 with new tokens
    spans, tails = ((0, 4), (7, 17)), ([150, 151, 152], [160, 161])
    bounds = torch.tensor([0, 3, 5], dtype=torch.int32)
    continuation = {
        "input_ids": torch.tensor([tails[0] + tails[1]]),
        "position_ids": torch.tensor([[4, 5, 6, 10, 11]]),
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": 3,
        "max_length_k": 3,
    }
    with torch.no_grad():
        have = decoder(**continuation, prefix_keys=(cache, spans)).last_hidden_state[0]
        want = [
            decoder(input_ids=torch.tensor([rows[i][: end - start] + tail])).last_hidden_state[0, -len(tail) :]
            for i, ((start, end), tail) in enumerate(zip(spans, tails))
        ]
    assert torch.allclose(have, torch.cat(want), atol=1e-5)
    with pytest.raises(ValueError, match="without gradients"):
        decoder(**continuation, prefix_keys=(cache, spans))
    with pytest.raises(ValueError, match="2 examples"):
        with torch.no_grad():
            decoder(**continuation, prefix_keys=(cache, spans[:1]))
    with pytest.raises(ValueError, match="^key_cache need a flattened batch"):
        decoder(input_ids=torch.tensor([rows[0]]), key_cache=KeyCache())
