"""QLoRA through the core's fused low-rank linear: the dequantizer against bitsandbytes, the fused layers against peft's."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from factory_plugin_bitsandbytes.dequantize import FourBitWeight

import factory
from factory.errors import PluginError
from factory.model.loader import load_model
from factory.plugin_api import dequantizer_of

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"
torch.set_num_threads(2)


def four_bit_layer(
    shape: tuple[int, int], quant_type: str, double_quant: bool, dtype: torch.dtype = torch.float32
) -> bnb.nn.Linear4bit:
    """A ``Linear4bit`` quantized on CPU from a random ``dtype`` weight, computing in bf16."""
    out_features, in_features = shape
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16)
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, quant_type=quant_type, compress_statistics=double_quant
    )
    return layer.to("cpu")


def bnb_dense(layer: bnb.nn.Linear4bit) -> torch.Tensor:
    """The oracle: bitsandbytes' own dequantization, cast to the compute dtype as its matmul does."""
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(layer.compute_dtype)


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((1536, 576), torch.bfloat16),  # SmolLM2's MLP, quantized from bf16 as transformers loads it
        ((100, 200), torch.float32),  # neither the 64-value nor the 256-scale blocks divide it
        ((7, 9), torch.bfloat16),  # an odd count: the last byte holds one value
        ((333, 197), torch.bfloat16),  # several chunks, the last one ending in a shorter block and half a byte
    ],
)
def test_dequantizer_gives_bitsandbytes_bits(shape, dtype, quant_type, double_quant):
    layer = four_bit_layer(shape, quant_type, double_quant, dtype)
    assert layer.weight.quant_state.nested is double_quant
    dense = FourBitWeight(layer)()
    assert dense.dtype == torch.bfloat16 and dense.shape == shape
    assert torch.equal(dense, bnb_dense(layer))


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="the repacking needs a CPU with AVX512-BF16")
def test_a_layer_repacked_for_inference_is_refused_not_misread():
    layer = four_bit_layer((64, 128), "nf4", True).eval()
    source = FourBitWeight(layer)
    with torch.no_grad():
        layer(torch.randn(2, 128, dtype=torch.bfloat16))  # bitsandbytes repacks on this pass
    with pytest.raises(PluginError, match="repacked .* load the model with quantization=bnb-4bit"):
        source()


def qlora(tiny: Path, *overrides: str) -> torch.nn.Module:
    """The tiny model as the bnb-4bit quantizer and the peft plugin prepare it: bf16, LoRA rank 4 on every linear
    layer, each ``lora_B`` set non-zero (peft starts it at zero) so the adapter's path counts."""
    cfg = factory.load_config(
        None, [f"model={tiny}", "precision=bf16", "quantization=bnb-4bit", "lora.rank=4", *overrides]
    )
    model = load_model(cfg, cfg.manager(), train=True).model
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))
    return model


def step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits, the input-embedding gradient (through every frozen base) and each adapter gradient of one step."""
    model.train()
    model.zero_grad()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs_embeds=embeds, labels=ids)
    out.loss.backward()
    adapters = [p.grad.float() for n, p in sorted(model.named_parameters()) if p.requires_grad]
    return (out.logits.detach().float(), embeds.grad.float(), *adapters)


def test_fused_qlora_layers_compute_what_peft_and_bitsandbytes_do(tiny_causal_lm):
    fused, plain = qlora(tiny_causal_lm), qlora(tiny_causal_lm, "fused_ops=false")  # the same seeded adapters
    bases = [m for m in fused.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(bases) == 2 * 7 and all(dequantizer_of(m) is not None for m in bases)
    base_calls = []
    for base in bases:  # the fused path computes the base product itself: bitsandbytes' layer never runs
        base.register_forward_hook(lambda *_: base_calls.append(1))
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    ours, peft = step(fused, ids), step(plain, ids)
    assert base_calls == [] and len(ours) == 2 + 2 * len(bases)
    for got, want in zip(ours, peft):
        assert want.abs().max() > 0
        assert (got - want).abs().max() <= 0.02 * want.abs().max()


def finetune_losses(run, tiny: Path, tmp_path: Path, fused_ops: bool) -> list[float]:
    metrics = run(tiny, tmp_path / f"fused-{fused_ops}", max_steps=6, precision="bf16", fused_ops=fused_ops)
    return [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]


def test_a_short_fused_qlora_run_learns_what_the_unfused_one_does(tiny_causal_lm, tmp_path, tiny_qlora_run):
    fused = finetune_losses(tiny_qlora_run, tiny_causal_lm, tmp_path, True)
    plain = finetune_losses(tiny_qlora_run, tiny_causal_lm, tmp_path, False)
    assert len(fused) == len(plain) == 6
    assert fused[-1] < fused[0]
    for got, want in zip(fused, plain):
        assert abs(got - want) <= 0.01 * want, (fused, plain)
