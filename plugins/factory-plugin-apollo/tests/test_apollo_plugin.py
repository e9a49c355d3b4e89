"""factory-plugin-apollo against its contract and apollo-torch's APOLLOAdamW built directly."""

from __future__ import annotations

import pytest
import torch
from apollo_torch import APOLLOAdamW
from factory_plugin_apollo.optim import APOLLO, APOLLO_LAYERWISE, APOLLO_MINI
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.testing import check_layerwise_steps, check_optimizer_reload, check_plugin_contract, optimizer_step

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None, ["method=full", "optimizer=apollo", "learning_rate=1e-3", "weight_decay=0.01", *overrides]
    )


def groups_of(model) -> list[dict]:
    """The core's default grouping: matrices with weight decay, vectors without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.01},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def direct(model, settings: dict) -> APOLLOAdamW:
    """APOLLOAdamW over the same parameters, grouped by hand in the same order (the random projections are seeded by it)."""
    named = list(model.named_parameters())
    target = [p for n, p in named if n.endswith(tuple(f"{m}.weight" for m in LINEAR))]
    other_matrices = [p for n, p in named if p.ndim >= 2 and not n.endswith(tuple(f"{m}.weight" for m in LINEAR))]
    vectors = [p for _, p in named if p.ndim < 2]
    return APOLLOAdamW(
        [
            {"params": target, "weight_decay": 0.01, **settings},
            {"params": other_matrices, "weight_decay": 0.01},
            {"params": vectors, "weight_decay": 0.0},
        ],
        lr=1e-3,
    )


def test_contract():
    rows = check_plugin_contract("factory-plugin-apollo")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"optimizers": ["apollo", "apollo-layerwise", "apollo-mini"]}
    assert factory.get_manager().load("optimizers", "apollo-mini") is APOLLO_MINI


@pytest.mark.parametrize(
    ("impl", "overrides", "settings"),
    [
        (
            APOLLO,
            ["apollo.rank=4", "apollo.update_proj_gap=2"],
            {
                "rank": 4,
                "proj": "random",
                "scale_type": "channel",
                "scale": 32.0,
                "update_proj_gap": 2,
                "proj_type": "std",
            },
        ),
        (
            APOLLO_MINI,
            ["apollo.update_proj_gap=2"],
            {
                "rank": 1,
                "proj": "random",
                "scale_type": "tensor",
                "scale": 128.0,
                "update_proj_gap": 2,
                "proj_type": "std",
            },
        ),
        (
            APOLLO,
            ["apollo.proj=svd", "apollo.scale=4", "apollo.rank=2"],
            {
                "rank": 2,
                "proj": "svd",
                "scale_type": "channel",
                "scale": 4.0,
                "update_proj_gap": 200,
                "proj_type": "std",
            },
        ),
    ],
)
def test_steps_equal_apollo_torch_built_directly(impl, overrides, settings, tiny_causal_lm, batch):
    ours_model, theirs_model = (AutoModelForCausalLM.from_pretrained(tiny_causal_lm) for _ in range(2))
    ours = impl.create(ours_model, config(*overrides), groups_of(ours_model))
    theirs = direct(theirs_model, settings)
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    losses = []
    for _ in range(4):  # update_proj_gap=2: a new projection is drawn on the way
        losses.append(optimizer_step(ours_model, ours, batch))
        optimizer_step(theirs_model, theirs, batch)
    for (n, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, start[n]), f"{n} did not train"
    assert losses[-1] < losses[0], losses
    q_proj = ours_model.model.layers[0].self_attn.q_proj.weight
    assert ours.state[q_proj]["exp_avg"].shape == (64, settings["rank"])  # moments live in the projected space


def test_state_survives_the_trainers_safe_reload(tiny_causal_lm, batch):
    cfg = config("apollo.rank=4")
    check_optimizer_reload(tiny_causal_lm, lambda model: APOLLO.create(model, cfg, groups_of(model)), batch)


def test_layerwise_takes_apollo_torchs_steps_and_keeps_no_gradient(tiny_causal_lm, batch):
    """Each weight stepped inside backward by its own APOLLOAdamW (seeded as in one optimizer, the scheduled
    learning rate copied in) ends where apollo-torch's APOLLOAdamW over all of them does."""
    settings = {
        "rank": 4,
        "proj": "random",
        "scale_type": "channel",
        "scale": 32.0,
        "update_proj_gap": 2,
        "proj_type": "std",
    }
    cfg = config("apollo.rank=4", "apollo.update_proj_gap=2", "max_grad_norm=0")
    check_layerwise_steps(
        tiny_causal_lm,
        lambda model: APOLLO_LAYERWISE.create(model, cfg, groups_of(model)),
        lambda model: direct(model, settings),
        batch,
        steps=4,  # update_proj_gap=2: a new projection is drawn on the way
    )


def test_layerwise_state_survives_the_trainers_safe_reload(tiny_causal_lm, batch):
    cfg = config("optimizer=apollo-layerwise", "apollo.rank=4", "max_grad_norm=0")
    check_optimizer_reload(tiny_causal_lm, lambda model: APOLLO_LAYERWISE.create(model, cfg, groups_of(model)), batch)


def test_layerwise_refuses_accumulation_before_loading(tmp_path):
    with pytest.raises(ConfigError) as err:
        factory.finetune(
            None,
            [
                "method=full",
                "optimizer=apollo-layerwise",
                "max_grad_norm=0",
                "gradient_accumulation_steps=2",
                f"output_dir={tmp_path / 'out'}",
            ],
        )
    message = str(err.value)
    assert message.startswith("optimizer apollo-layerwise steps each weight as soon as backward reaches it")
    assert "use optimizer=apollo" in message and "\n" not in message and not (tmp_path / "out").exists()


def test_target_must_select_trained_weights(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    for name, param in model.named_parameters():
        param.requires_grad_("norm" in name)
    with pytest.raises(ConfigError, match=r"apollo.target='all' selects no trainable 2-D weight .* method=freeze"):
        APOLLO.create(model, config("method=freeze"), groups_of(model))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("apollo.rank=0", "apollo.rank"),
        ("apollo.proj=gaussian", "apollo.proj"),
        ("apollo.scale_type=row", "apollo.scale_type"),
        ("apollo.scale=0", "apollo.scale"),
    ],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, [override])
    message = str(err.value)
    assert f"config key '{key}'" in message and "\n" not in message, message
