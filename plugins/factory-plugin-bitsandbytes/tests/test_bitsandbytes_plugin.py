"""factory-plugin-bitsandbytes: contract, config mapping, the CPU repacking guard, QLoRA training, export."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from factory_plugin_bitsandbytes.quantizer import BNB_4BIT, BNB_8BIT
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import factory
from factory.errors import ConfigError, PluginError
from factory.model.export import export_model
from factory.model.loader import load_model
from factory.testing import check_plugin_contract

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"
torch.set_num_threads(2)


def config(tiny: Path, *overrides: str) -> factory.RunConfig:
    return factory.load_config(None, [f"model={tiny}", "precision=fp32", "lora.rank=4", *overrides])


def input_gradient(model, ids: torch.Tensor) -> torch.Tensor:
    """d loss / d input embeddings in train mode: it only reaches the embeddings through the frozen base."""
    model.train()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds, labels=ids).loss.backward()
    model.zero_grad()
    return embeds.grad


def eval_pass(model, ids: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        model(ids)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def test_contract():
    rows = check_plugin_contract("factory-plugin-bitsandbytes")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"quantizers": ["bnb-4bit", "bnb-8bit"]}


def test_options_map_to_bitsandbytes_config(tiny_causal_lm):
    q = BNB_4BIT.quantization_config(config(tiny_causal_lm, "bnb.quant_type=fp4", "bnb.double_quant=false"))
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "fp4", False)
    assert q.bnb_4bit_compute_dtype == torch.float32  # auto follows precision=fp32
    q = BNB_4BIT.quantization_config(config(tiny_causal_lm, "precision=bf16"))
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) == (
        "nf4",
        True,
        torch.bfloat16,
    )
    q = BNB_4BIT.quantization_config(config(tiny_causal_lm, "bnb.compute_dtype=fp16"))
    assert q.bnb_4bit_compute_dtype == torch.float16
    q = BNB_8BIT.quantization_config(config(tiny_causal_lm, "bnb.int8_threshold=3.5"))
    assert (q.load_in_8bit, q.load_in_4bit, q.llm_int8_threshold) == (True, False, 3.5)
    with pytest.raises(ConfigError, match="bnb.quant_type"):
        config(tiny_causal_lm, "bnb.quant_type=int3")


@pytest.mark.parametrize(
    ("quantization", "layer"), [("bnb-4bit", bnb.nn.Linear4bit), ("bnb-8bit", bnb.nn.Linear8bitLt)]
)
def test_lora_on_quantized_layers_keeps_base_gradients_after_an_eval_pass(tiny_causal_lm, ids, quantization, layer):
    cfg = config(tiny_causal_lm, f"quantization={quantization}", "bnb.quant_type=nf4")
    model = load_model(cfg, cfg.manager(), train=True).model
    quantized = [name for name, m in model.named_modules() if isinstance(m, layer)]
    assert len(quantized) == 2 * 7  # every linear layer of both blocks (lora.target=all found them), not the head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = input_gradient(model, ids)
    eval_pass(model, ids)
    after = input_gradient(model, ids)
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before)


def test_4bit_gradients_match_the_dequantized_model(tiny_causal_lm, ids):
    cfg = config(tiny_causal_lm, "quantization=bnb-4bit", "method=freeze")
    quantized = load_model(cfg, cfg.manager(), train=False).model
    eval_pass(quantized, ids)
    oracle = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    modules = dict(oracle.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            modules[name].weight.data = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    torch.testing.assert_close(input_gradient(quantized, ids), input_gradient(oracle, ids), rtol=1e-3, atol=1e-6)


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="the repacking trap needs a CPU with AVX512-BF16")
def test_without_the_guard_an_eval_pass_breaks_base_gradients(tiny_causal_lm, ids):
    """The trap the guard exists for: plain transformers loading, one eval pass, wrong gradients."""
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, quantization_config=quant, dtype=torch.float32)
    before = input_gradient(model, ids)
    eval_pass(model, ids)
    assert not torch.allclose(input_gradient(model, ids), before, rtol=1e-2, atol=1e-4)


def test_qlora_trains_saves_and_reloads_on_the_unquantized_base(tiny_causal_lm, tmp_path, tiny_qlora_run):
    out = tmp_path / "qlora"
    metrics = tiny_qlora_run(tiny_causal_lm, out, max_steps=12, precision="fp32")
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert sum(losses[-3:]) / 3 < 0.98 * losses[0], losses  # a random tiny model; the e2e test checks real learning
    assert (out / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(out))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 7 and all(p.abs().sum() > 0 for p in lora_b)


def test_export_writes_a_quantized_model_and_refuses_to_merge(tiny_causal_lm, ids, tmp_path):
    cfg = config(tiny_causal_lm, "quantization=bnb-4bit")
    out = export_model(cfg, cfg.manager(), str(tmp_path / "q4"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(reloaded, "is_loaded_in_4bit", False)
    expected = load_model(cfg, cfg.manager(), train=False).model(ids).logits
    torch.testing.assert_close(reloaded(ids).logits, expected)

    adapter = tmp_path / "adapter"
    lora = config(tiny_causal_lm, "method=lora")
    plain = load_model(lora, lora.manager(), train=True)
    plain.adapter.save(plain.model, str(adapter))
    cfg = config(tiny_causal_lm, "quantization=bnb-4bit", f"adapter={adapter}")
    with pytest.raises(
        PluginError,
        match=r"cannot merge the adapter '.*' into the bnb-4bit model .*; export with model= the full-precision model and no quantization=",
    ):
        export_model(cfg, cfg.manager(), str(tmp_path / "merged"))


def test_refuses_a_model_that_is_already_quantized_otherwise():
    class Config:
        quantization_config = type("Q", (), {"quant_method": "gptq"})()

    model = type("M", (), {"config": Config()})()
    with pytest.raises(PluginError, match="did not apply to model 'm', which is already quantized with gptq"):
        BNB_4BIT.after_load(model, factory.load_config(None, ["model=m"]))
