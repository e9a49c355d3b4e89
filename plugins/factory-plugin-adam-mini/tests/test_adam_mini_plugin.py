"""factory-plugin-adam-mini against its contract, Adam_mini built directly and Adam-mini's update rule."""

from __future__ import annotations

import pytest
import torch
from adam_mini import Adam_mini
from factory_plugin_adam_mini.optim import ADAM_MINI
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.testing import check_plugin_contract, optimizer_step


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None, ["method=full", "optimizer=adam-mini", "learning_rate=1e-3", "weight_decay=0.1", *overrides]
    )


def groups_of(model) -> list[dict]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def test_contract():
    rows = check_plugin_contract("factory-plugin-adam-mini")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"optimizers": ["adam-mini"]}


def test_steps_equal_adam_mini_built_directly(tiny_causal_lm, batch, capsys):
    ours_model, theirs_model = (AutoModelForCausalLM.from_pretrained(tiny_causal_lm) for _ in range(2))
    ours = ADAM_MINI.create(ours_model, config("adam_mini.betas=[0.9,0.95]"), groups_of(ours_model))
    theirs = Adam_mini(
        theirs_model.named_parameters(),
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        dim=64,
        n_heads=4,
        n_kv_heads=2,
        verbose=False,
    )
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    losses = [optimizer_step(ours_model, ours, batch) for _ in range(4)]
    for _ in range(4):
        optimizer_step(theirs_model, theirs, batch)
    for (n, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, start[n]), f"{n} did not train"
    assert losses[-1] < losses[0] - 0.3, losses
    assert capsys.readouterr().out == ""  # quiet: Adam-mini prints every block it finds unless told not to


def test_first_step_uses_one_second_moment_per_head(tiny_causal_lm, batch):
    """Adam-mini's rule on q_proj (4 heads of 16 x 64 weights): Adam's first step, with v the mean of g^2 over each head."""
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    optimizer = ADAM_MINI.create(model, config("weight_decay=0"), groups_of(model))
    weight = model.model.layers[1].self_attn.q_proj.weight
    before = weight.detach().clone()
    model(batch, labels=batch).loss.backward()
    grad = weight.grad.detach().clone()
    optimizer.step()
    heads = grad.reshape(4, -1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m_hat = (1 - beta1) * heads / (1 - beta1)
    v_hat = (1 - beta2) * (heads**2).mean(dim=1, keepdim=True) / (1 - beta2)
    expected = before - 1e-3 * (m_hat / (v_hat.sqrt() + eps)).reshape_as(before)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-5, atol=1e-8)
    assert optimizer.state[weight]["vmean"].shape == (4, 1)


def test_adapter_learning_rates_are_kept(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    groups = groups_of(model)
    groups[1]["lr"] = 5e-2
    optimizer = ADAM_MINI.create(model, config(), groups)
    vectors = {id(p) for p in groups[1]["params"]}
    assert {(id(g["params"][0]) in vectors, g["lr"]) for g in optimizer.param_groups} == {(True, 5e-2), (False, 1e-3)}


def test_lora_factors_are_refused(tiny_causal_lm):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm), LoraConfig(r=4, target_modules=["q_proj"])
    )
    with pytest.raises(ConfigError) as err:
        ADAM_MINI.create(model, config("method=lora"), groups_of(model))
    message = str(err.value)
    assert message.startswith("optimizer adam-mini splits query/key weights into 4 heads, which ")
    assert "lora_A" in message and message.endswith("of method=lora does not fit; use method=full or freeze")
