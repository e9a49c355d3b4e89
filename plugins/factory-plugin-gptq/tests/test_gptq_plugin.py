"""factory-plugin-gptq: contract, calibration from a factory data set, quantize -> checkpoint -> load, LoRA, guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factory_plugin_gptq.quantizer import GPTQ
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError, PluginError
from factory.model.export import export_model
from factory.model.loader import load_model
from factory.model.modules import is_quantized_linear
from factory.testing import check_plugin_contract

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
torch.set_num_threads(2)


def config(model: Path, *overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None,
        [
            f"model={model}",
            "precision=fp32",
            "quantization=gptq",
            "gptq.group_size=32",
            "gptq.calibration_samples=8",
            "dataset=alpaca_en_demo",
            f"dataset_dir={DEMO_DIR}",
            "lora.rank=4",
            *overrides,
        ],
    )


def input_gradient(model, ids: torch.Tensor) -> torch.Tensor:
    """d loss / d input embeddings in train mode: it reaches the embeddings only through the quantized base."""
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


@pytest.fixture(scope="module")
def checkpoint(tiny_causal_lm, tmp_path_factory) -> Path:
    """The tiny model quantized to 4 bits on 8 alpaca_en_demo records, written by factory export."""
    cfg = config(tiny_causal_lm)
    return export_model(cfg, cfg.manager(), str(tmp_path_factory.mktemp("gptq") / "tiny-gptq"))


def test_contract():
    rows = check_plugin_contract("factory-plugin-gptq")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"quantizers": ["gptq"]}


def test_options_map_to_gptq_config_with_calibration_from_a_factory_data_set(tiny_causal_lm):
    cfg = config(
        tiny_causal_lm, "gptq.bits=8", "gptq.desc_act=true", "gptq.group_size=-1", "gptq.calibration_samples=5"
    )
    q = GPTQ.quantization_config(cfg)
    assert (q.bits, q.group_size, q.desc_act, q.sym) == (8, -1, True, True)
    rows = json.loads((DEMO_DIR / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:5]
    assert len(q.dataset) == 5
    for text, row in zip(q.dataset, rows):
        assert row["instruction"] in text and row["output"] in text
    with pytest.raises(ConfigError, match="gptq.bits"):
        config(tiny_causal_lm, "gptq.bits=5")
    with pytest.raises(ConfigError, match="gptq.group_size"):
        config(tiny_causal_lm, "gptq.group_size=0")


def test_quantized_checkpoint_reloads_with_weights_close_to_the_original(tiny_causal_lm, checkpoint):
    saved = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    assert (saved["quant_method"], saved["bits"], saved["group_size"], saved["desc_act"]) == ("gptq", 4, 32, False)
    cfg = config(checkpoint, "method=freeze")
    model = load_model(cfg, cfg.manager(), train=False).model
    original = dict(AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).named_modules())
    layers = {name: m for name, m in model.named_modules() if is_quantized_linear(m)}
    assert len(layers) == 2 * 7
    for name, layer in layers.items():
        weight = original[name].weight
        restored = layer.dequantize_weight().T.float()
        assert restored.shape == weight.shape
        error = (restored - weight).norm() / weight.norm()
        assert 0 < error < 0.2, (name, error)  # 4-bit: close, but really quantized


def test_lora_targets_quantized_layers_and_keeps_gradients_after_an_eval_pass(checkpoint, ids):
    cfg = config(checkpoint)
    model = load_model(cfg, cfg.manager(), train=True).model
    wrapped = [n for n, m in model.named_modules() if is_quantized_linear(getattr(m, "base_layer", None))]
    assert len(wrapped) == 2 * 7  # lora.target=all found every GPTQ layer
    assert sorted({n.rsplit(".", 1)[-1] for n in wrapped}) == LINEAR
    eval_pass(model, ids)  # the first forward: without the guard the layers would switch to inference kernels
    after = input_gradient(model, ids)
    oracle = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    expected = input_gradient(oracle, ids)  # first forward in train mode: the training kernel
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-6)

    unguarded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    eval_pass(unguarded, ids)
    assert not torch.allclose(input_gradient(unguarded, ids), expected, rtol=1e-2, atol=1e-4)  # the trap


def test_lora_trains_on_the_checkpoint_and_merging_is_refused(checkpoint, tmp_path):
    out = tmp_path / "lora"
    metrics = factory.finetune(
        config(
            checkpoint,
            f"output_dir={out}",
            "max_samples=8",
            "cutoff_len=96",
            "batch_size=4",
            "max_steps=6",
            "learning_rate=5e-2",
            "lr_scheduler=constant",
            "logging_steps=1",
            "sample_prompt=null",
        )
    )
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0], losses
    assert (out / "adapter_model.safetensors").is_file()
    cfg = config(checkpoint, f"adapter={out}")
    with pytest.raises(PluginError, match=r"cannot merge the adapter '.*' into the GPTQ model .*packed integers"):
        export_model(cfg, cfg.manager(), str(tmp_path / "merged"))


def test_refuses_a_checkpoint_quantized_otherwise(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    with pytest.raises(PluginError, match="already quantized with awq; GPTQ quantizes full-precision models"):
        GPTQ.before_load(config(tmp_path), {})
