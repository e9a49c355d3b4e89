"""factory-plugin-s2attn: S2-Attn against a straightforward reference, in a model, and through factory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from factory_plugin_s2attn.attention import s2_attention, s2_attention_forward
from factory_plugin_s2attn.patch import S2ATTN
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import factory
from factory.errors import ConfigError, PluginError
from factory.model.loader import load_model
from factory.testing import check_plugin_contract

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


def reference(q, k, v, group: int, shift: bool, mask=None):
    """Shift-short attention by its definition, one head at a time, over the full N x N score matrix.

    Token t of an unshifted head sees token u <= t of the same group t // G; a shifted head (the
    second half, when ``shift``) groups tokens by (t + G/2) // G instead. ``mask`` (B, N, N): may attend.
    """
    batch, heads, length, dim = q.shape
    t = torch.arange(length)
    out = torch.empty_like(q)
    for h in range(heads):
        offset = group // 2 if shift and h >= heads // 2 else 0
        gid = (t + offset) // group
        allowed = (t[None, :] <= t[:, None]) & (gid[None, :] == gid[:, None])
        for b in range(batch):
            ok = allowed if mask is None else allowed & mask[b]
            ok = ok | torch.eye(length, dtype=torch.bool)
            scores = (q[b, h] @ k[b, h].T) / math.sqrt(dim)
            out[b, h] = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1) @ v[b, h]
    return out


def qkv(batch=2, heads=4, length=16, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64) for _ in range(3)]


def test_contract():
    rows = check_plugin_contract("factory-plugin-s2attn")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"patches": ["s2attn"]}


@pytest.mark.parametrize(
    ("length", "group", "shift"), [(16, 4, True), (16, 4, False), (18, 4, True), (21, 6, True), (5, 8, True)]
)
def test_matches_the_reference(length, group, shift):
    q, k, v = qkv(length=length)
    torch.testing.assert_close(s2_attention(q, k, v, group, shift=shift), reference(q, k, v, group, shift))


def test_matches_the_reference_with_padding_and_packed_masks():
    q, k, v = qkv(length=12)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    keys = torch.ones(2, 12, dtype=torch.bool)
    keys[1, 9:] = False  # the second row ends in 3 padding tokens
    seq = torch.tensor([0] * 5 + [1] * 7)  # the first row packs two examples: 5 + 7 tokens
    mask = causal & keys[:, None, :]
    mask[0] &= seq[None, :] == seq[:, None]
    got = s2_attention(q, k, v, 4, shift=True, mask=mask[:, None])
    want = reference(q, k, v, 4, True, mask)
    real = torch.stack([torch.ones(12, dtype=torch.bool), keys[1]])  # padding rows are ignored by the loss
    for b in range(2):
        torch.testing.assert_close(got[b][:, real[b]], want[b][:, real[b]])


def test_attention_function_trains_with_s2_and_serves_with_full_attention():
    q, _, _ = qkv(heads=4, length=16)
    k, v = qkv(heads=2, length=16, seed=1)[:2]  # grouped-query attention: 2 key/value heads
    module = SimpleNamespace(
        training=True, s2attn_group_size_ratio=0.25, s2attn_shift=True, num_key_value_groups=2, is_causal=True
    )
    out, weights = s2_attention_forward(module, q, k, v, None, scaling=1 / math.sqrt(8))
    assert weights is None and out.shape == (2, 16, 4, 8)
    expected = reference(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), 4, True)
    torch.testing.assert_close(out, expected.transpose(1, 2))
    module.training = False
    full, _ = s2_attention_forward(module, q, k, v, None, scaling=1 / math.sqrt(8))
    torch.testing.assert_close(full, sdpa_attention_forward(module, q, k, v, None, scaling=1 / math.sqrt(8))[0])


def test_patched_model_uses_s2_while_training_only(tiny_causal_lm):
    ids = torch.randint(3, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).train()
    full = plain(ids).logits

    def patched(*overrides):
        cfg = factory.load_config(
            None, [f"model={tiny_causal_lm}", "patches=[s2attn]", "precision=fp32", "method=full", *overrides]
        )
        return load_model(cfg, cfg.manager(), train=True).model

    model = patched()
    assert model.config._attn_implementation == "s2attn"
    assert model.model.layers[1].self_attn.s2attn_group_size_ratio == 0.25
    sparse = model(ids).logits
    torch.testing.assert_close(
        sparse[:, :4], full[:, :4], rtol=1e-4, atol=1e-5
    )  # G = 8: tokens before G/2 see all they would
    assert (sparse[:, 4:] - full[:, 4:]).abs().max() > 1e-3  # later tokens see only their groups
    model.eval()
    torch.testing.assert_close(model(ids).logits, plain.eval()(ids).logits, rtol=1e-4, atol=1e-5)

    one_group = patched("s2attn.group_size_ratio=1", "s2attn.shift=false")
    torch.testing.assert_close(one_group(ids).logits, full, rtol=1e-4, atol=1e-5)


def test_lora_training_through_factory(tiny_causal_lm, tmp_path):
    metrics = factory.finetune(
        model=str(tiny_causal_lm),
        patches=["s2attn"],
        s2attn={"group_size_ratio": 0.5},
        dataset="alpaca_en_demo",
        dataset_dir=str(DEMO_DIR),
        max_samples=8,
        cutoff_len=64,
        batch_size=4,
        max_steps=3,
        logging_steps=1,
        output_dir=str(tmp_path / "out"),
        precision="fp32",
        sample_prompt=None,
    )
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_before_load_and_refusals(tiny_causal_lm, tmp_path):
    cfg = factory.load_config(None, [f"model={tiny_causal_lm}", "patches=[s2attn]"])
    kwargs: dict = {}
    facts = S2ATTN.before_load(cfg, kwargs)
    assert kwargs["attn_implementation"] == "s2attn" and facts.padding_free is False  # groups are cut per row
    assert cfg.padding_free is True  # decided as a fact; the config stays the user's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(PluginError, match="is of type 'gpt2', whose attention S2-Attn does not patch"):
        S2ATTN.before_load(factory.load_config(None, [f"model={tmp_path}"]), {})
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    model.config.sliding_window = 16
    with pytest.raises(PluginError, match="uses sliding-window attention"):
        S2ATTN.after_load(model, factory.load_config(None, [f"model={tiny_causal_lm}"]))
    with pytest.raises(ConfigError, match="s2attn.group_size_ratio"):
        factory.load_config(None, ["s2attn.group_size_ratio=0"])
