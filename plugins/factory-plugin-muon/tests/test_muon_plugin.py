"""factory-plugin-muon against its contract and torch.optim.Muon + torch.optim.AdamW built directly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factory_plugin_muon.optim import MUON, MuonWithAdamW
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.testing import check_optimizer_reload, check_optimizer_resume, check_plugin_contract, optimizer_step

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"

LINEAR = tuple(f"{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(
        None, ["method=full", "optimizer=muon", "learning_rate=1e-3", "weight_decay=0.01", *overrides]
    )


def groups_of(model) -> list[dict]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.01},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def scheduled(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / 10)


def test_contract():
    rows = check_plugin_contract("factory-plugin-muon")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"optimizers": ["muon"]}
    assert factory.get_manager().load("optimizers", "muon") is MUON


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_scheduled_steps_equal_torch_muon_and_adamw_built_directly(adjust, tiny_causal_lm, batch):
    ours_model, theirs_model = (AutoModelForCausalLM.from_pretrained(tiny_causal_lm) for _ in range(2))
    ours = MUON.create(
        ours_model, config(f"muon.adjust_lr={adjust}", "muon.adamw_betas=[0.9,0.95]"), groups_of(ours_model)
    )
    named = list(theirs_model.named_parameters())
    hidden = [p for n, p in named if n.endswith(LINEAR)]
    muon = torch.optim.Muon([{"params": hidden, "weight_decay": 0.01}], lr=1e-3, adjust_lr_fn=adjust)
    adamw = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if p.ndim >= 2 and not n.endswith(LINEAR)], "weight_decay": 0.01},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    assert {id(p) for g in ours.parts["muon"].param_groups for p in g["params"]} == {
        id(p) for n, p in ours_model.named_parameters() if n.endswith(LINEAR)
    }  # the embeddings (tied head) and norms go to AdamW
    ours_lr, muon_lr, adamw_lr = scheduled(ours), scheduled(muon), scheduled(adamw)
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    losses = []
    for _ in range(4):
        losses.append(optimizer_step(ours_model, ours, batch))
        ours_lr.step()
        theirs_model(batch, labels=batch).loss.backward()
        for optimizer, scheduler in ((muon, muon_lr), (adamw, adamw_lr)):
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    for (n, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, start[n]), f"{n} did not train"
    assert losses[-1] < losses[0], losses
    assert {g["lr"] for g in ours.param_groups} == {1e-3 * 0.6}


def test_muon_step_is_an_orthogonalised_update(tiny_causal_lm, batch):
    """Muon's first update of a weight is Newton-Schulz-orthogonalised: its singular values lie near
    lr * 0.2 * sqrt(max(A, B)) (the iteration lands them in roughly [0.5, 1.5] of it), whatever the gradient's spread."""
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    optimizer = MUON.create(model, config("weight_decay=0"), groups_of(model))
    weight = model.model.layers[0].mlp.up_proj.weight  # 128 x 64
    before = weight.detach().clone()
    model(batch, labels=batch).loss.backward()
    spread = torch.linalg.svdvals(weight.grad)
    optimizer.step()
    singular = torch.linalg.svdvals(weight.detach() - before) / (1e-3 * 0.2 * 128**0.5)
    assert spread.max() / spread.min() > 10  # the raw gradient is far from orthogonal
    assert singular.min() > 0.3 and singular.max() < 1.5, singular


def test_state_resumes_exactly(tiny_causal_lm, batch):
    cfg = config()
    check_optimizer_reload(
        tiny_causal_lm, lambda model: MUON.create(model, cfg, groups_of(model)), batch, schedule=False
    )


def test_state_resumes_exactly_under_a_schedule(tiny_causal_lm, batch):
    cfg = config()
    check_optimizer_reload(tiny_causal_lm, lambda model: MUON.create(model, cfg, groups_of(model)), batch)


def test_only_matrices_train_gives_muon_alone(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(LINEAR))
    optimizer = MUON.create(model, config("method=freeze"), groups_of(model))
    assert isinstance(optimizer, torch.optim.Muon) and not isinstance(optimizer, MuonWithAdamW)


def test_target_must_select_trained_weights(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    for name, param in model.named_parameters():
        param.requires_grad_("norm" in name)
    with pytest.raises(ConfigError, match=r"^muon.target='all' selects no trainable 2-D weight .* method=freeze"):
        MUON.create(model, config("method=freeze"), groups_of(model))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("muon.momentum=1", "muon.momentum"),
        ("muon.adjust_lr=none", "muon.adjust_lr"),
        ("muon.ns_steps=0", "muon.ns_steps"),
    ],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, [override])
    assert f"config key '{key}'" in str(err.value) and "\n" not in str(err.value)


def test_trains_and_resumes_through_finetune(tiny_causal_lm, tmp_path):
    """Through the Trainer and accelerate: the loss falls, and a run resumed half-way (both halves' states) ends
    with the uninterrupted run's weights."""
    check_optimizer_resume(tmp_path, tiny_causal_lm, DEMO_DIR, "optimizer=muon")
