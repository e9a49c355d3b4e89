"""factory-plugin-aqlm: AQLM checkpoints load and compute the right thing on CPU; training is refused up front.

The test writes an AQLM checkpoint ("2x8": two 256-entry codebooks per group of 8 inputs) with
random codes; the oracle is the weight those codes spell, summed from the codebooks by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numba
import pytest
import torch
from factory_plugin_aqlm.quantizer import AQLM
from transformers import AutoModelForCausalLM

import factory
from factory import hardware
from factory.errors import PluginError
from factory.model.export import export_model
from factory.model.loader import load_model
from factory.model.modules import is_quantized_linear
from factory.testing import check_plugin_contract, write_quantized_checkpoint

CODEBOOKS, NBITS, GROUP = 2, 8, 8


def random_codes(gen: torch.Generator):
    """A quantizer that replaces each weight by random AQLM codes, returning the weight those codes spell."""

    def quantize(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out_features, in_features = weight.shape
        codes = torch.randint(0, 2**NBITS, (out_features, in_features // GROUP, CODEBOOKS), generator=gen)
        books = torch.randn(CODEBOOKS, 2**NBITS, 1, GROUP, generator=gen) * 0.1
        scales = torch.rand(out_features, 1, 1, 1, generator=gen) + 0.5
        spelled = sum(books[c, codes[:, :, c], 0, :] for c in range(CODEBOOKS)).reshape(out_features, in_features)
        return {"codes": codes.to(torch.int8), "codebooks": books, "scales": scales}, spelled * scales.reshape(
            out_features, 1
        )

    return quantize


AQLM_CONFIG = {
    "quant_method": "aqlm",
    "in_group_size": GROUP,
    "out_group_size": 1,
    "num_codebooks": CODEBOOKS,
    "nbits_per_codebook": NBITS,
    "linear_weights_not_to_quantize": ["lm_head"],
}


@pytest.fixture(scope="module")
def checkpoint(tiny_causal_lm, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("aqlm") / "tiny-aqlm"
    return folder, write_quantized_checkpoint(
        tiny_causal_lm, folder, random_codes(torch.Generator().manual_seed(0)), AQLM_CONFIG
    )


def config(model: Path, *overrides: str) -> factory.RunConfig:
    return factory.load_config(None, [f"model={model}", "precision=fp32", "quantization=aqlm", *overrides])


def oracle_model(tiny: Path, dequantized: dict[str, torch.Tensor]):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    modules = dict(model.named_modules())
    for name, weight in dequantized.items():
        modules[name].weight.data = weight
    return model


def test_contract():
    rows = check_plugin_contract("factory-plugin-aqlm")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"quantizers": ["aqlm"]}


def test_checkpoint_serves_the_weights_its_codes_spell(tiny_causal_lm, checkpoint):
    folder, dequantized = checkpoint
    model = load_model(config(folder, "precision=bf16"), factory.get_manager(), train=False).model
    if not hardware.cuda_devices():
        assert model.model.layers[0].self_attn.q_proj.codebooks.dtype == torch.float32  # the CPU kernel takes fp32 only
    layers = {name: m for name, m in model.named_modules() if is_quantized_linear(m)}
    assert sorted(layers) == sorted(dequantized)
    gen = torch.Generator().manual_seed(1)
    layer, weight = layers["model.layers.0.self_attn.q_proj"], dequantized["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        # Unguarded, aqlm's parallel CPU kernel gets ~1 call in 8 wrong (threads race on shared sums):
        # 40 calls of each kernel (matrix-vector up to 6 rows, matrix-matrix above) would catch it.
        for _ in range(40):
            for rows in (3, 12):
                x = torch.randn(rows, 64, generator=gen)
                torch.testing.assert_close(layer(x), x @ weight.T, rtol=1e-4, atol=1e-5)
        ids = torch.randint(3, 300, (2, 16), generator=gen)
        expected = oracle_model(tiny_causal_lm, dequantized)(ids).logits
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(bool(hardware.cuda_devices()), reason="this machine has a GPU")
def test_training_is_refused_before_loading(checkpoint, tmp_path):
    folder, _ = checkpoint
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "finetune",
            f"model={folder}",
            "quantization=aqlm",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "quantization aqlm cannot train on this machine because AQLM's CPU kernels" in lines[0]
    ), proc.stderr
    assert not (tmp_path / "out").exists()


def test_export_writes_a_checkpoint_that_reloads(tiny_causal_lm, checkpoint, tmp_path):
    folder, dequantized = checkpoint
    out = export_model(config(folder), factory.get_manager(), str(tmp_path / "exported"))
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    numba.set_num_threads(1)  # plain transformers loading has no guard against aqlm's racy parallel kernel
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(ids).logits, oracle_model(tiny_causal_lm, dequantized)(ids).logits, rtol=1e-4, atol=1e-4
        )


def test_refuses_unquantized_models_and_merging(tiny_causal_lm, checkpoint, tmp_path):
    with pytest.raises(PluginError, match="is not quantized, and quantization=aqlm only loads AQLM checkpoints"):
        AQLM.before_load(config(tiny_causal_lm), {})
    folder, _ = checkpoint
    with pytest.raises(PluginError, match=r"cannot merge the adapter 'a' into the AQLM model .*codebook vectors"):
        AQLM.export(None, None, str(tmp_path / "merged"), config(folder, "adapter=a"))
