"""The model loader pipeline with the built-in loaders and methods, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from factory import hardware
from factory.config import load_config
from factory.errors import ConfigError
from factory.model import loader as loader_mod
from factory.model.loader import load_model
from factory.model.precision import resolve_precision


@pytest.mark.parametrize(
    ("gpus", "bf16_cpu", "expected"),
    [
        ((), True, "bf16"),
        ((), False, "fp32"),
        ((hardware.CudaDevice("A100", (8, 0)),), False, "bf16"),
        ((hardware.CudaDevice("T4", (7, 5)),), True, "fp16"),
    ],
)
def test_auto_precision(monkeypatch, gpus, bf16_cpu, expected):
    monkeypatch.setattr(hardware, "cuda_devices", lambda: gpus)
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: bf16_cpu)
    assert resolve_precision("auto") == expected
    assert resolve_precision("fp32") == "fp32"


def test_full_method_loads_fp32_and_trains_everything(tiny_causal_lm, plugin_manager):
    cfg = load_config(model=str(tiny_causal_lm), method="full", precision="bf16")
    loaded = load_model(cfg, plugin_manager, train=True)
    params = list(loaded.model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert loaded.compute_dtype == torch.bfloat16
    assert loaded.model.training


def test_hub_kernels_never_replace_the_forwards_factory_gives_a_model(tiny_causal_lm, plugin_manager):
    """transformers 5.25 loads with Hub kernels on when ``kernels`` is installed and kernelizes again on
    ``model.train()``, which swapped factory's fused RMSNorm out once training started; the loader turns them off."""
    from factory.model.fused import _norm_forward

    cfg = load_config(model=str(tiny_causal_lm), method="full", precision="bf16")
    model = load_model(cfg, plugin_manager, train=True).model
    model.eval()
    model.train()  # where transformers re-kernelizes a model that loaded with Hub kernels
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and all(getattr(m.forward, "__func__", None) is _norm_forward for m in norms)
    assert not getattr(model, "use_kernels", False)


def test_freeze_keeps_frozen_weights_in_compute_dtype_and_trainables_fp32(tiny_causal_lm, plugin_manager):
    cfg = load_config(
        model=str(tiny_causal_lm),
        method="freeze",
        precision="bf16",
        freeze={"layers": 1, "modules": ["mlp"], "extra": ["norm"]},
    )
    model = load_model(cfg, plugin_manager, train=True).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.mlp.")} | {
        "model.norm.weight"
    }
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if n not in trainable)


def test_freeze_first_layers(tiny_causal_lm, plugin_manager):
    cfg = load_config(model=str(tiny_causal_lm), method="freeze", precision="fp32", freeze={"layers": -1})
    model = load_model(cfg, plugin_manager, train=True).model
    layers = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert layers == {"0"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layers": 5}, "freeze.layers=5 but the model has only 2 layers; choose a value between -2 and 2"),
        ({"modules": ["mlpp"]}, "freeze.modules names 'mlpp', which is not in the model's layers; did you mean 'mlp'?"),
        (
            {"extra": ["lm_hed"]},
            "freeze.extra names 'lm_hed', which is not a module of the model; did you mean 'lm_head'?",
        ),
    ],
)
def test_freeze_errors(tiny_causal_lm, plugin_manager, options, message):
    cfg = load_config(model=str(tiny_causal_lm), method="freeze", freeze=options)
    with pytest.raises(ConfigError) as err:
        load_model(cfg, plugin_manager, train=True)
    assert message in str(err.value)


def test_unknown_model_source_is_one_sentence(plugin_manager, tmp_path):
    cfg = load_config(model=str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="is neither a model folder, a .gguf file, an alias nor a hub id"):
        load_model(cfg, plugin_manager, train=False)


def test_uncached_hub_id_says_offline(plugin_manager, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(model="some-org/some-model")
    with pytest.raises(ConfigError, match="is not in the local Hugging Face cache .* and HF_HUB_OFFLINE is set"):
        load_model(cfg, plugin_manager, train=False)


def test_gradient_checkpointing_and_sdpa(tiny_causal_lm, plugin_manager):
    cfg = load_config(
        model=str(tiny_causal_lm), method="full", gradient_checkpointing=True, attn_implementation="eager"
    )
    model = load_model(cfg, plugin_manager, train=True).model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert model.config._attn_implementation == "eager"


def test_embeddings_grow_for_added_tokens(tiny_causal_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new_turn|>"]})
    rows = model.get_input_embeddings().weight.shape[0]
    loader_mod._fit_embeddings(model, tokenizer)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) > rows


def test_whole_model_method_refuses_adapter_load(tiny_causal_lm, plugin_manager, tmp_path):
    (tmp_path / "factory_config.yaml").write_text("method: full\n")
    cfg = load_config(model=str(tiny_causal_lm), adapter=str(tmp_path))
    with pytest.raises(ConfigError, match="holds a whole model from method=full, not an adapter"):
        load_model(cfg, plugin_manager, train=False)
