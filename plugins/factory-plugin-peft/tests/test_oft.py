"""Method oft against peft: only the rotations train, and the saved adapter is what PeftModel.from_pretrained loads."""

from __future__ import annotations

import pytest
import torch
from factory_plugin_peft.methods import OFT
from peft import OFTConfig, PeftModel
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, ["method=oft", "learning_rate=1e-2", *overrides])


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def train(model, batch, steps: int = 10) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_registered_with_its_own_section():
    impl = factory.get_manager().get("adapters", "oft")
    assert impl.distribution == "factory-plugin-peft" and impl.section == "oft"
    assert factory.get_manager().load("adapters", "oft") is OFT


def test_settings_reach_peft_and_start_from_the_base_model(tiny_causal_lm, batch):
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    reference = logits(base, batch)
    model = OFT.apply(
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm), config("oft.block_size=16", "oft.target=[q_proj,v_proj]")
    )
    peft_config = model.peft_config["default"]
    assert isinstance(peft_config, OFTConfig)
    assert (peft_config.oft_block_size, peft_config.r, set(peft_config.target_modules)) == (16, 0, {"q_proj", "v_proj"})
    torch.testing.assert_close(logits(model, batch), reference)  # the rotations start at the identity
    by_rank = OFT.apply(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), config("oft.rank=4"))
    assert (by_rank.peft_config["default"].r, by_rank.peft_config["default"].oft_block_size) == (4, 0)


def test_trains_only_the_rotations_and_reloads_through_peft(tiny_causal_lm, batch, tmp_path):
    model = OFT.apply(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), config("oft.block_size=16"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".oft_" in n for n in trainable)
    assert len({n.split(".oft_")[0] for n in trainable}) == 2 * 7  # every linear layer of both blocks
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, batch)
    assert losses[-1] < losses[0] - 0.3, losses
    for n, p in model.named_parameters():
        assert (not torch.equal(p, before[n])) == (n in trainable), n
    trained = logits(model, batch)

    OFT.save(model, str(tmp_path))
    oracle = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), str(tmp_path))
    torch.testing.assert_close(logits(oracle, batch), trained, rtol=0, atol=0)
    ours = OFT.load(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), str(tmp_path), config())
    torch.testing.assert_close(logits(ours, batch), trained, rtol=0, atol=0)
    merged = OFT.merge(ours)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(logits(merged, batch), trained, rtol=1e-4, atol=1e-5)


def test_block_size_that_does_not_divide_is_one_sentence(tiny_causal_lm):
    with pytest.raises(ConfigError) as err:
        OFT.apply(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), config("oft.block_size=48"))
    message = str(err.value)
    assert (
        message
        == "oft.block_size=48 does not divide the input size of every target layer (64, 128); choose a divisor of 64"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["oft.block_size=0"], "config section 'oft': oft.block_size and oft.rank are both 0"),
        (["oft.dropout=1"], "config key 'oft.dropout'"),
        (["oft.rnak=4"], "unknown config key 'oft.rnak'; did you mean 'oft.rank'?"),
    ],
)
def test_bad_options_are_one_sentence(overrides, expected):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, overrides)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
