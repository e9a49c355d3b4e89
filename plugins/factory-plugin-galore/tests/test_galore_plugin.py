"""factory-plugin-galore against its contract, the GaLore update rule and plain-torch training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factory_plugin_galore.optim import GALORE, GALORE_LAYERWISE
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError, PluginError
from factory.testing import (
    check_layerwise_steps,
    check_optimizer_reload,
    check_optimizer_resume,
    check_plugin_contract,
    optimizer_step,
)

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, ["method=full", "optimizer=galore", "learning_rate=1e-3", *overrides])


def groups_of(model) -> list[dict]:
    """The core's default grouping: matrices with weight decay, vectors without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.01},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@pytest.fixture
def model(tiny_causal_lm):
    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def names_in_galore_groups(model, optimizer) -> set[str]:
    ids = {id(p) for g in optimizer.param_groups if "rank" in g for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_contract():
    rows = check_plugin_contract("factory-plugin-galore")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"optimizers": ["galore", "galore-8bit", "galore-layerwise"]}
    assert "galore-8bit needs a CUDA GPU" in rows[0]["reason"]


def test_8bit_variant_is_refused_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(
        PluginError, match="optimizer 'galore-8bit' from factory-plugin-galore cannot run here: it needs a CUDA GPU"
    ):
        factory.get_manager().load("optimizers", "galore-8bit")
    assert factory.get_manager().load("optimizers", "galore") is GALORE


def test_full_training_projects_target_weights_and_lowers_the_loss(model, batch):
    optimizer = GALORE.create(model, config("galore.rank=8"), groups_of(model))
    projected = names_in_galore_groups(model, optimizer)
    expected = {n for n, p in model.named_parameters() if n.endswith(tuple(f"{m}.weight" for m in LINEAR))}
    assert projected == expected and len(expected) == 2 * 7  # every linear layer of both blocks, not the head
    galore = [g for g in optimizer.param_groups if "rank" in g]
    assert {(g["rank"], g["update_proj_gap"], g["scale"], g["proj_type"], g["weight_decay"]) for g in galore} == {
        (8, 200, 0.25, "std", 0.01)
    }
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [optimizer_step(model, optimizer, batch) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.3, losses
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), f"{n} did not change under full training"
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    state = optimizer.state[q_proj]
    assert state["exp_avg"].shape == (64, 8)  # Adam moments live in the rank-8 projected space


def test_first_step_follows_the_galore_update_rule(model, batch):
    """An independent computation of one GaLore AdamW step on q_proj: project the gradient onto its
    top singular vectors, take Adam's first step there, project back, scale."""
    cfg = config("galore.rank=4", "galore.scale=0.5", "galore.target=[q_proj]")
    optimizer = GALORE.create(model, cfg, [{"params": list(model.parameters()), "weight_decay": 0.0}])
    weight = model.model.layers[1].self_attn.q_proj.weight
    before = weight.detach().clone()
    loss = model(batch, labels=batch).loss
    loss.backward()
    grad = weight.grad.detach().clone()
    optimizer.step()

    _, _, vh = torch.linalg.svd(grad, full_matrices=False)
    basis = vh[:4]  # square gradient: 'std' projects on the right singular vectors
    low = grad @ basis.T
    beta1, beta2, eps = 0.9, 0.999, 1e-6
    direction = (1 - beta1) * low / (((1 - beta2) * low**2).sqrt() + eps)
    step_size = 1e-3 * (1 - beta2) ** 0.5 / (1 - beta1)
    expected = before - step_size * (direction @ basis) * 0.5
    torch.testing.assert_close(weight.detach(), expected, atol=1e-7, rtol=1e-5)


def test_freeze_keeps_frozen_weights(model, batch):
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("model.layers.1."))
    optimizer = GALORE.create(model, config("method=freeze", "learning_rate=1e-2"), groups_of(model))
    weights = tuple(f"{m}.weight" for m in LINEAR)
    assert names_in_galore_groups(model, optimizer) == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.1.") and n.endswith(weights)
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [optimizer_step(model, optimizer, batch) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.3, losses
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("model.layers.1."), n


def test_explicit_targets(model):
    optimizer = GALORE.create(model, config("galore.target=q_proj,mlp.down_proj"), groups_of(model))
    assert names_in_galore_groups(model, optimizer) == {
        f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj")
    }


def test_unknown_target_names_the_linear_modules(model):
    with pytest.raises(ConfigError) as err:
        GALORE.create(model, config("galore.target=[q_proj, wq]"), groups_of(model))
    message = str(err.value)
    assert message.startswith("galore.target names 'wq', which LlamaForCausalLM does not have")
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message and "\n" not in message


def test_target_that_trains_nothing_is_refused(model):
    for name, param in model.named_parameters():
        param.requires_grad_("norm" in name)
    with pytest.raises(ConfigError, match=r"galore.target='all' selects no trainable 2-D weight .* method=freeze"):
        GALORE.create(model, config("method=freeze"), groups_of(model))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("galore.rank=0", "galore.rank"),
        ("galore.update_proj_gap=0", "galore.update_proj_gap"),
        ("galore.scale=-1", "galore.scale"),
        ("galore.proj_type=diagonal", "galore.proj_type"),
        ("galore.ranks=4", "galore.ranks"),
    ],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, [override])
    message = str(err.value)
    assert f"config key '{key}'" in message and "\n" not in message and ". " not in message, message


def test_state_survives_the_trainers_safe_reload(tiny_causal_lm, batch):
    """Resuming reloads optimizer state with torch.load(weights_only=True): the projectors must come back."""
    cfg = config("galore.rank=4", "galore.update_proj_gap=100")
    check_optimizer_reload(tiny_causal_lm, lambda model: GALORE.create(model, cfg, groups_of(model)), batch)


def test_layerwise_takes_the_same_steps_as_galore_and_keeps_no_gradient(tiny_causal_lm, batch):
    """Stepping each weight inside backward (its own optimizer, the scheduled learning rate copied in)
    gives the weights of galore-torch's GaLoreAdamW stepping them all after backward."""
    cfg = config("galore.rank=4", "galore.update_proj_gap=2", "max_grad_norm=0")
    layerwise = check_layerwise_steps(
        tiny_causal_lm,
        lambda model: GALORE_LAYERWISE.create(model, cfg, groups_of(model)),
        lambda model: GALORE.create(model, cfg, groups_of(model)),
        batch,
        steps=5,  # the projection is recomputed twice on the way
    )
    assert len(layerwise.per_param) == 2 * 9 + 2  # one optimizer per weight: nine per block, embeddings, final norm


def test_layerwise_state_resumes_exactly(tiny_causal_lm, batch):
    cfg = config("galore.rank=4", "max_grad_norm=0")
    check_optimizer_reload(tiny_causal_lm, lambda model: GALORE_LAYERWISE.create(model, cfg, groups_of(model)), batch)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "gradient_accumulation_steps=2",
            "gradients cannot accumulate over gradient_accumulation_steps=2; set it to 1",
        ),
        ("max_grad_norm=1.0", "so max_grad_norm=1.0 cannot clip it; set max_grad_norm=0"),
        ("nproc=2", "it trains in one process only; drop nproc, deepspeed and fsdp"),
    ],
)
def test_layerwise_refuses_what_it_cannot_honour_before_loading(override, expected, tmp_path):
    base = ["method=full", "optimizer=galore-layerwise", "max_grad_norm=0", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError) as err:
        factory.finetune(None, [*base, override])
    message = str(err.value)
    assert message.startswith("optimizer galore-layerwise steps each weight as soon as backward reaches it")
    assert expected in message and "\n" not in message and not (tmp_path / "out").exists()


def test_trains_and_resumes_through_finetune(tiny_causal_lm, tmp_path):
    """Through the Trainer: the loss falls with every weight stepped inside backward, and a run resumed half-way
    (per-weight states with their projectors, reloaded weights_only) ends with the uninterrupted run's weights."""
    check_optimizer_resume(
        tmp_path,
        tiny_causal_lm,
        DEMO_DIR,
        "optimizer=galore-layerwise",
        "galore.rank=4",
        "galore.update_proj_gap=3",
        "max_grad_norm=0",
    )
