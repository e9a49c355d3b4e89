"""factory-plugin-llama-pro: the expanded model computes the original function, trains only its new blocks, and
saves a model plain transformers loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factory_plugin_llama_pro.expand import LLAMA_PRO
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.testing import build_tiny_causal_lm, check_plugin_contract

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, ["method=llama-pro", *overrides])


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny4"), layers=4, seed=1)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))


def logits(model, ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def test_contract():
    rows = check_plugin_contract("factory-plugin-llama-pro")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"adapters": ["llama-pro"]}


def test_expanded_model_computes_the_original_function(four_layers, batch):
    original = AutoModelForCausalLM.from_pretrained(four_layers)
    expanded = LLAMA_PRO.apply(AutoModelForCausalLM.from_pretrained(four_layers), config("llama_pro.expand=2"))
    layers = expanded.model.layers
    assert len(layers) == expanded.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))
    # new blocks after original layers 1 and 3: copies of them with zero output projections
    for new, source in ((2, 1), (5, 3)):
        for (name, param), (_, base) in zip(
            layers[new].named_parameters(), original.model.layers[source].named_parameters()
        ):
            expected = torch.zeros_like(base) if name.split(".")[-2] in ("o_proj", "down_proj") else base
            assert torch.equal(param, expected), name
    trainable = {n for n, p in expanded.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in expanded.named_parameters() if n.startswith(("model.layers.2.", "model.layers.5."))
    }
    assert torch.equal(logits(expanded, batch), logits(original, batch))
    # the KV cache has a slot per block: generation with the cache is unchanged too
    prompt = batch[:1, :8]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(expanded.generate(prompt, **kwargs), original.generate(prompt, **kwargs))


def test_trained_model_saves_for_plain_transformers(four_layers, batch, tmp_path):
    model = LLAMA_PRO.apply(AutoModelForCausalLM.from_pretrained(four_layers), config("llama_pro.expand=1"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("model.layers.4."), n
    LLAMA_PRO.save(model, str(tmp_path))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 5
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), rtol=0, atol=0)


def test_expand_must_divide_the_layers(four_layers):
    with pytest.raises(ConfigError) as err:
        LLAMA_PRO.apply(
            AutoModelForCausalLM.from_pretrained(four_layers), config("llama_pro.expand=3", f"model={four_layers}")
        )
    assert str(err.value) == (
        f"llama_pro.expand=3 does not divide the 4 decoder layers of model '{four_layers}' into equal groups; "
        "choose one of 1, 2, 4"
    )


def test_finetune_expands_trains_and_writes_the_expanded_model(four_layers, tmp_path):
    out = tmp_path / "run"
    metrics = factory.finetune(
        None,
        [
            f"model={four_layers}",
            "method=llama-pro",
            "llama_pro.expand=2",
            "dataset=alpaca_en_demo",
            f"dataset_dir={DEMO_DIR}",
            "max_samples=16",
            "cutoff_len=64",
            "batch_size=4",
            "max_steps=4",
            "learning_rate=1e-2",
            "logging_steps=1",
            "precision=fp32",
            "sample_prompt=null",
            f"output_dir={out}",
        ],
    )
    assert metrics["trainable_parameters"] == 2 * sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(four_layers).model.layers[0].parameters()
    )
    saved = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(four_layers)
    assert saved.config.num_hidden_layers == 6
    for new, source in ((0, 0), (1, 1), (3, 2), (4, 3)):  # the original blocks are untouched
        for a, b in zip(saved.model.layers[new].parameters(), base.model.layers[source].parameters()):
            assert torch.equal(a, b)
    assert saved.model.layers[2].self_attn.o_proj.weight.abs().sum() > 0  # the new blocks learned
