"""factory-plugin-awq: AWQ checkpoints load on CPU with the right weights, LoRA trains on top, refusals.

No AWQ checkpoint can be downloaded here and AWQ quantizers need CUDA, so the test writes one:
the tiny model's linear weights rounded to 4 bits per group of 32 input rows and packed in the
AWQ GEMM layout. The oracle is that rounding itself: every loaded layer must compute
``x @ W_dequantized.T``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factory_plugin_awq.quantizer import AWQ
from transformers import AutoModelForCausalLM

import factory
from factory.errors import PluginError
from factory.model.export import export_model
from factory.model.loader import load_model
from factory.model.modules import is_quantized_linear
from factory.testing import check_plugin_contract, write_quantized_checkpoint

GROUP = 32
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AWQ GEMM stores the 8 nibbles of an int32 in this column order
torch.set_num_threads(2)


def pack(values: torch.Tensor) -> torch.Tensor:
    """(rows, cols) integers in [0, 15] -> (rows, cols / 8) int32, AWQ GEMM layout."""
    rows, cols = values.shape
    nibbles = values.reshape(rows, cols // 8, 8)[:, :, AWQ_ORDER].to(torch.int64)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for i in range(8):
        packed |= nibbles[:, :, i] << (4 * i)
    return packed.to(torch.int32)


def quantize(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-group min/max rounding to 4 bits in AWQ GEMM layout; returns the tensors and the dequantized weight."""
    out_features, in_features = weight.shape
    grouped = weight.T.float().reshape(in_features // GROUP, GROUP, out_features)
    low, high = grouped.amin(1), grouped.amax(1)
    scales = ((high - low) / 15).clamp(min=1e-5).half()
    zeros = (-low / scales.float()).round().clamp(0, 15)
    q = (grouped / scales.float()[:, None] + zeros[:, None]).round().clamp(0, 15)
    tensors = {
        "qweight": pack(q.reshape(in_features, out_features).int()),
        "qzeros": pack(zeros.int()),
        "scales": scales,
    }
    return tensors, ((q - zeros[:, None]) * scales.float()[:, None]).reshape(in_features, out_features).T


AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}


@pytest.fixture(scope="module")
def checkpoint(tiny_causal_lm, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("awq") / "tiny-awq"
    return folder, write_quantized_checkpoint(tiny_causal_lm, folder, quantize, AWQ_CONFIG)


def config(model: Path, *overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None, [f"model={model}", "precision=fp32", "quantization=awq", "lora.rank=4", *overrides]
    )


def input_gradient(model, ids: torch.Tensor) -> torch.Tensor:
    model.train()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds, labels=ids).loss.backward()
    model.zero_grad()
    return embeds.grad


def test_contract():
    rows = check_plugin_contract("factory-plugin-awq")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"quantizers": ["awq"]}


def test_checkpoint_loads_with_the_packed_weights(checkpoint):
    folder, dequantized = checkpoint
    cfg = config(folder, "method=freeze")
    model = load_model(cfg, cfg.manager(), train=False).model
    layers = {name: m for name, m in model.named_modules() if is_quantized_linear(m)}
    assert sorted(layers) == sorted(dequantized) and len(layers) == 2 * 7
    gen = torch.Generator().manual_seed(0)
    model.train()  # the dense kernel training uses (gptqmodel's packed inference kernel needs >= 128 input features)
    with torch.no_grad():
        for name, layer in layers.items():
            weight = dequantized[name]
            x = torch.randn(3, weight.shape[1], generator=gen)
            torch.testing.assert_close(layer(x), x @ weight.T, rtol=2e-3, atol=2e-3)


def test_lora_on_awq_layers_keeps_gradients_after_an_eval_pass(checkpoint):
    folder, _ = checkpoint
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = config(folder)
    model = load_model(cfg, cfg.manager(), train=True).model
    wrapped = [n for n, m in model.named_modules() if is_quantized_linear(getattr(m, "base_layer", None))]
    assert len(wrapped) == 2 * 7  # lora.target=all found every AWQ layer
    model.eval()
    with torch.no_grad():
        model(ids)
    expected = input_gradient(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ids)
    torch.testing.assert_close(input_gradient(model, ids), expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().sum() > 0


def test_refuses_models_that_are_not_awq_checkpoints(tiny_causal_lm, tmp_path):
    with pytest.raises(PluginError, match="is not quantized, and quantization=awq only loads AWQ checkpoints"):
        AWQ.before_load(config(tiny_causal_lm), {})
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(PluginError, match="is quantized with gptq, and quantization=awq only loads"):
        AWQ.before_load(config(tmp_path), {})


def test_export_refuses_to_merge_an_adapter(checkpoint, tmp_path):
    folder, _ = checkpoint
    cfg = config(folder)
    loaded = load_model(cfg, cfg.manager(), train=True)
    loaded.adapter.save(loaded.model, str(tmp_path / "adapter"))
    cfg = config(folder, f"adapter={tmp_path / 'adapter'}")
    with pytest.raises(PluginError, match=r"cannot merge the adapter '.*' into the AWQ model .*packed integers"):
        export_model(cfg, cfg.manager(), str(tmp_path / "merged"))
