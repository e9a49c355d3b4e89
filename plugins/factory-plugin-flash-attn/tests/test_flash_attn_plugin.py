"""factory-plugin-flash-attn on a CPU machine: declared GPU-only, refused before loading, and its wiring.

The wiring test stands a pure-torch varlen function in for flash_attn's ``flash_attn_varlen_func``
inside transformers' FlashAttention integration, so the real path from factory's padding-free
batches to the backend call runs here: the call must get each example's bounds, and the result
must equal every example run alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import transformers.modeling_flash_attention_utils as fa_utils
from factory_plugin_flash_attn.patch import DETERMINISTIC_ENV, FLASH_ATTN_2, FLASH_ATTN_3
from transformers import AutoModelForCausalLM, AutoTokenizer

import factory
from factory import hardware
from factory.data.collator import FlatteningCollator
from factory.data.kinds import sequence_collator
from factory.data.processing import batch_layout
from factory.errors import PluginError
from factory.testing import check_plugin_contract

NO_GPU = not hardware.cuda_devices()


def test_contract_and_listing():
    rows = check_plugin_contract("factory-plugin-flash-attn")
    assert rows[0]["provides"] == {"patches": ["flash-attn", "flash-attn3"]}
    if NO_GPU:
        assert rows[0]["status"] == (
            "unavailable: flash-attn needs a CUDA GPU with compute capability >= 8.0; none was found on this machine; "
            "flash-attn3 needs a CUDA GPU with compute capability >= 9.0; none was found on this machine"
        )


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_finetune_refuses_before_loading_any_model(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "finetune",
            "patches=[flash-attn]",
            f"model={tmp_path / 'no-such-model'}",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        "patch 'flash-attn' from factory-plugin-flash-attn cannot run here: it needs a CUDA GPU with compute capability >= 8.0"
        in lines[0]
    )
    assert not (tmp_path / "out").exists()


def test_config_maps_to_attn_implementation_and_varlen_batches(tiny_causal_lm, monkeypatch):
    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)
    cfg = factory.load_config(None, ["patches=[flash-attn3]", "flash_attn.deterministic=true"])
    kwargs: dict = {"attn_implementation": cfg.attn_implementation}
    facts = FLASH_ATTN_3.before_load(cfg, kwargs)
    assert kwargs["attn_implementation"] == facts.attn_implementation == "flash_attention_3"
    assert cfg.attn_implementation == "sdpa"  # the config stays the user's
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    flatten = batch_layout(cfg, facts).padding_free  # as the training run decides
    assert isinstance(sequence_collator(tokenizer, packing=False, flatten=flatten), FlatteningCollator)
    assert os.environ[DETERMINISTIC_ENV] == "1"

    padded = factory.load_config(None, ["flash_attn.varlen=false"])
    kwargs = {}
    facts = FLASH_ATTN_2.before_load(padded, kwargs)
    assert kwargs["attn_implementation"] == "flash_attention_2" and padded.attn_implementation == "sdpa"
    assert padded.padding_free is True and batch_layout(padded, facts).padding_free is False
    flatten = batch_layout(padded, facts).padding_free
    assert not isinstance(sequence_collator(tokenizer, packing=False, flatten=flatten), FlatteningCollator)


def test_after_load_refuses_a_model_that_ignored_the_request(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, attn_implementation="sdpa")
    cfg = factory.load_config(None, [f"model={tiny_causal_lm}"])
    with pytest.raises(PluginError, match="runs sdpa attention instead of flash_attention_2"):
        FLASH_ATTN_2.after_load(model, cfg)
    model.config._attn_implementation = "flash_attention_2"
    assert FLASH_ATTN_2.after_load(model, cfg) is model


def _reference_varlen(calls):
    """A pure-torch stand-in for flash_attn_varlen_func: causal attention inside each [start, end) bound."""

    def flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        window_size=(-1, -1),
        softcap=0.0,
        alibi_slopes=None,
        deterministic=False,
        return_attn_probs=False,
    ):
        calls.append(
            {
                "cu_seqlens_q": cu_seqlens_q.clone(),
                "cu_seqlens_k": cu_seqlens_k.clone(),
                "max_seqlen_q": max_seqlen_q,
                "causal": causal,
                "deterministic": deterministic,
            }
        )
        groups = q.shape[1] // k.shape[1]
        out = torch.empty_like(q)
        bounds = cu_seqlens_q.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
            out[start:end] = torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=causal, scale=softmax_scale
            ).transpose(0, 1)
        return out

    return flash_attn_varlen_func


def test_varlen_batches_reach_the_backend_with_each_examples_bounds(tiny_causal_lm, monkeypatch):
    calls: list[dict] = []
    varlen = _reference_varlen(calls)
    monkeypatch.setattr(fa_utils, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa_utils, "_flash_varlen_fn", varlen)
    monkeypatch.setattr(fa_utils, "_process_flash_kwargs_fn", fa_utils._lazy_define_process_function(varlen))
    monkeypatch.setenv(DETERMINISTIC_ENV, "0")

    cfg = factory.load_config(
        None, [f"model={tiny_causal_lm}", "patches=[flash-attn]", "flash_attn.deterministic=true"]
    )
    kwargs: dict = {}
    facts = FLASH_ATTN_2.before_load(cfg, kwargs)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    model.config._attn_implementation = kwargs["attn_implementation"]  # what from_pretrained sets on a GPU
    FLASH_ATTN_2.after_load(model, cfg)

    gen = torch.Generator().manual_seed(0)
    examples = [torch.randint(3, 300, (n,), generator=gen) for n in (7, 12, 5)]
    collator = sequence_collator(
        AutoTokenizer.from_pretrained(tiny_causal_lm), packing=False, flatten=batch_layout(cfg, facts).padding_free
    )
    batch = collator([{"input_ids": e.tolist(), "labels": e.tolist()} for e in examples])
    batch.pop("labels")
    with torch.no_grad():
        flat = model(**batch).logits[0]
    assert len(calls) == model.config.num_hidden_layers
    assert calls[0]["cu_seqlens_q"].tolist() == [0, 7, 19, 24] and calls[0]["max_seqlen_q"] == 12
    assert calls[0]["causal"] is True and calls[0]["deterministic"] is True

    model.config._attn_implementation = "sdpa"
    start = 0
    for example in examples:
        with torch.no_grad():
            alone = model(example[None]).logits[0]
        torch.testing.assert_close(flat[start : start + len(example)], alone, rtol=1e-4, atol=1e-5)
        start += len(example)
