"""factory-plugin-rope against transformers: its RoPE init functions and a model loaded with the same rope_parameters."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import factory
from factory.errors import ConfigError, PluginError
from factory.model.loader import load_model
from factory.testing import build_tiny_causal_lm, check_plugin_contract

LONG = 1300  # past the tiny model's 512 positions


def config(model, *overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None, [f"model={model}", "patches=[rope-scaling]", "precision=fp32", "method=full", *overrides]
    )


def loaded(cfg) -> torch.nn.Module:
    return load_model(cfg, cfg.manager(), train=False).model


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 300, (1, LONG), generator=torch.Generator().manual_seed(0))


def test_contract():
    rows = check_plugin_contract("factory-plugin-rope")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"patches": ["rope-scaling"]}


@pytest.mark.parametrize(
    ("overrides", "expected", "max_positions"),
    [
        (["rope_scaling.type=linear", "rope_scaling.factor=4"], {"rope_type": "linear", "factor": 4.0}, 2048),
        (["rope_scaling.type=dynamic", "rope_scaling.factor=4"], {"rope_type": "dynamic", "factor": 4.0}, 512),
        (
            ["rope_scaling.type=yarn", "rope_scaling.factor=4", "rope_scaling.beta_fast=16"],
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "beta_fast": 16.0},
            2048,
        ),
        (
            ["rope_scaling.type=llama3", "rope_scaling.factor=8", "rope_scaling.original_max_position_embeddings=256"],
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 256,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
            2048,
        ),
    ],
)
def test_same_model_as_plain_transformers_with_these_rope_parameters(
    overrides, expected, max_positions, tiny_causal_lm, ids
):
    ours = loaded(config(tiny_causal_lm, *overrides))
    reference_config = AutoConfig.from_pretrained(tiny_causal_lm)
    reference_config.rope_parameters = {"rope_theta": 10000.0, **expected}
    reference_config.max_position_embeddings = max_positions
    reference = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, config=reference_config, dtype=torch.float32
    ).eval()
    assert ours.config.rope_parameters == reference_config.rope_parameters
    assert ours.config.max_position_embeddings == max_positions
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[expected["rope_type"]](reference_config, torch.device("cpu"))
    torch.testing.assert_close(ours.model.rotary_emb.inv_freq, inv_freq)
    assert ours.model.rotary_emb.attention_scaling == pytest.approx(scaling)
    ours_logits = logits(ours, ids)
    torch.testing.assert_close(ours_logits, logits(reference, ids), rtol=0, atol=0)
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    assert not torch.allclose(ours_logits, logits(plain, ids), atol=1e-3)  # the scaling changed the model


def test_factor_defaults_to_the_context_asked_for(tiny_causal_lm):
    model = loaded(config(tiny_causal_lm, "rope_scaling.type=linear", f"cutoff_len={LONG}"))
    assert model.config.rope_parameters["factor"] == math.ceil(LONG / 512) == 3


def test_nothing_to_scale_is_one_sentence(tiny_causal_lm):
    with pytest.raises(ConfigError) as err:
        loaded(config(tiny_causal_lm, "cutoff_len=400"))
    assert str(err.value) == (
        f"rope_scaling: cutoff_len=400 fits in the 512 positions model '{tiny_causal_lm}' was trained for, so there is "
        "nothing to scale; set rope_scaling.factor or a cutoff_len above 512"
    )


def test_a_saved_model_keeps_its_scaling(tiny_causal_lm, ids, tmp_path):
    ours = loaded(config(tiny_causal_lm, "rope_scaling.type=yarn", "rope_scaling.factor=2"))
    ours.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    assert again.config.rope_parameters["rope_type"] == "yarn"
    torch.testing.assert_close(logits(again, ids), logits(ours, ids), rtol=0, atol=0)


def test_an_already_scaled_model_is_refused(tiny_causal_lm, tmp_path):
    scaled = AutoModelForCausalLM.from_pretrained(
        tiny_causal_lm, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    )
    scaled.save_pretrained(tmp_path / "scaled")
    with pytest.raises(PluginError, match=r"already scales RoPE \(linear, factor 2.0\); drop the rope-scaling patch"):
        loaded(config(tmp_path / "scaled", "rope_scaling.factor=2"))


def test_training_loads_through_the_patch(tmp_path, ids):
    path = build_tiny_causal_lm(tmp_path / "tiny", layers=1)
    cfg = config(path, "rope_scaling.type=dynamic", "rope_scaling.factor=2")
    model = load_model(cfg, cfg.manager(), train=True).model
    assert model.config.rope_parameters["rope_type"] == "dynamic"
    loss = model(ids[:, :600], labels=ids[:, :600]).loss
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [("rope_scaling.type=ntk", "rope_scaling.type"), ("rope_scaling.factor=1", "rope_scaling.factor")],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, [override])
    assert f"config key '{key}'" in str(err.value) and "\n" not in str(err.value)
