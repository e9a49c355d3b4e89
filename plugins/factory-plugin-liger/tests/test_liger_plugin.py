"""factory-plugin-liger on a CPU machine: declared GPU-only, refused before loading, and its wiring."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from factory_plugin_liger.patch import FAMILIES, LIGER, liger_call, patched_modules
from transformers import AutoModelForCausalLM

import factory
from factory import hardware
from factory.errors import ConfigError, PluginError
from factory.testing import check_plugin_contract

NO_GPU = not hardware.cuda_devices()


def options(*overrides: str):
    return factory.load_config(None, list(overrides)).options("liger")


def test_contract_and_listing():
    rows = check_plugin_contract("factory-plugin-liger")
    assert rows[0]["provides"] == {"patches": ["liger"]}
    if NO_GPU:
        assert (
            rows[0]["status"]
            == "unavailable: needs a CUDA GPU with compute capability >= 7.0; none was found on this machine"
        )


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_finetune_refuses_before_loading_any_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "finetune", "patches=[liger]", f"model={tmp_path / 'no-such-model'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: patch 'liger' from factory-plugin-liger cannot run here: it needs a CUDA GPU with compute capability "
        ">= 7.0; none was found on this machine"
    ]


def test_options_map_to_the_per_model_call():
    assert liger_call("llama", options()) == (
        "apply_liger_kernel_to_llama",
        {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": True},
    )
    function, kwargs = liger_call(
        "gemma2",
        options(
            "liger.swiglu=false",
            "liger.fused_linear_cross_entropy=false",
            "liger.cross_entropy=true",
            "liger.rope=false",
        ),
    )
    assert function == "apply_liger_kernel_to_gemma2"
    assert kwargs == {
        "rope": False,
        "rms_norm": True,
        "geglu": False,
        "cross_entropy": True,
        "fused_linear_cross_entropy": False,
    }
    with pytest.raises(PluginError, match="is of type 'gpt2', for which Liger has no kernels here"):
        liger_call("gpt2", options(), "m")
    with pytest.raises(ConfigError, match="turn one of them off"):
        options("liger.cross_entropy=true")


def test_which_modules_of_a_llama_model_are_patched(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    plan = patched_modules(model, options())
    assert plan["rms_norm"] == [
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm",
        "model.layers.1.post_attention_layernorm",
        "model.norm",
    ]
    assert plan["swiglu"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert plan["rope"] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert plan["fused_linear_cross_entropy"] == ["LlamaForCausalLM.forward"]
    assert set(patched_modules(model, options("liger.rms_norm=false", "liger.swiglu=false"))) == {
        "rope",
        "fused_linear_cross_entropy",
    }


def test_after_load_calls_liger_with_the_model(tiny_causal_lm, monkeypatch):
    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    for fam in FAMILIES.values():
        setattr(fake, fam.function, lambda fn=fam.function, **kw: calls.append((fn, kw)))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    cfg = factory.load_config(None, [f"model={tiny_causal_lm}", "patches=[liger]", "liger.rope=false"])
    LIGER.before_load(cfg, {})  # a llama checkpoint: accepted before loading
    assert LIGER.after_load(model, cfg) is model
    assert calls == [
        (
            "apply_liger_kernel_to_llama",
            {
                "model": model,
                "rope": False,
                "rms_norm": True,
                "swiglu": True,
                "cross_entropy": False,
                "fused_linear_cross_entropy": True,
            },
        )
    ]


def test_unsupported_model_type_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    cfg = factory.load_config(None, [f"model={tmp_path}"])
    with pytest.raises(
        PluginError, match=r"is of type 'gpt2', for which Liger has no kernels here; drop the liger patch"
    ):
        LIGER.before_load(cfg, {})


def test_when_liger_is_chosen_its_kernels_are_the_ones_that_run(tiny_causal_lm, tmp_path, monkeypatch):
    """factory's fused RMSNorm/SwiGLU forwards and its chunked loss step aside for what Liger took over.

    A stand-in for liger-kernel patches the loaded model the way the real one does (per-instance
    forwards of the norm and MLP modules, the causal LM's forward for the fused loss); the run's
    model and trainer are then checked to call those, not factory's own.
    """
    import json

    from factory.plugin_api import default_trainer, run_training

    marks: dict[str, list] = {"norm": [], "mlp": [], "loss": []}

    def apply_liger_kernel_to_llama(model, rope, rms_norm, swiglu, cross_entropy, fused_linear_cross_entropy):
        for module in model.modules():
            name = type(module).__name__
            if rms_norm and name.endswith("RMSNorm"):
                original = module.forward
                module.forward = lambda x, original=original: (marks["norm"].append(1), original(x))[1]
            if swiglu and name.endswith("MLP"):
                original = module.forward
                module.forward = lambda x, original=original: (marks["mlp"].append(1), original(x))[1]
        if fused_linear_cross_entropy:
            original = model.forward
            model.forward = lambda *a, original=original, **k: (marks["loss"].append(1), original(*a, **k))[1]

    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    monkeypatch.setattr(hardware, "cuda_devices", lambda: (hardware.CudaDevice("A100", (8, 0)),))
    monkeypatch.setattr(
        "factory.registry.Requires.unmet", lambda self: None
    )  # liger-kernel itself is not installed here

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(4)]))
    built = {}

    def build(setup):
        built["trainer"] = trainer = default_trainer(setup)
        return trainer

    cfg = factory.load_config(
        None,
        [
            f"model={tiny_causal_lm}",
            "patches=[liger]",
            "method=full",
            f"dataset={rows}",
            "max_samples=4",
            "max_steps=1",
            "batch_size=2",
            "cutoff_len=64",
            "precision=fp32",
            "sample_prompt=null",
            f"output_dir={tmp_path / 'out'}",
        ],
    )
    run_training(cfg, cfg.manager(), "supervised", build_trainer=build)
    assert built["trainer"].chunked_loss is False
    assert marks["norm"] and marks["mlp"] and marks["loss"]  # Liger's forwards ran in the training step

    plain = factory.load_config(
        None,
        [
            f"model={tiny_causal_lm}",
            f"dataset={rows}",
            "method=full",
            "max_steps=1",
            "batch_size=2",
            "cutoff_len=64",
            "precision=fp32",
            "sample_prompt=null",
            f"output_dir={tmp_path / 'plain'}",
        ],
    )
    run_training(plain, plain.manager(), "supervised", build_trainer=build)
    assert built["trainer"].chunked_loss is True  # without liger, factory's own chunked loss runs
