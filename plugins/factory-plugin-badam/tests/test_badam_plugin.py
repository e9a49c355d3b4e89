"""factory-plugin-badam against its contract, block-by-block training and a save/resume round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from badam import BAdamCallback
from factory_plugin_badam.optim import BADAM
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.testing import check_optimizer_reload, check_optimizer_resume, check_plugin_contract, optimizer_step

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, ["method=full", "optimizer=badam", "learning_rate=3e-3", *overrides])


def groups_of(model) -> list[dict]:
    """The core's default grouping: matrices with weight decay, vectors without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.0},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@pytest.fixture
def model(tiny_causal_lm):
    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_parts(model, before) -> set[str]:
    """Which parts changed since ``before``: 'layer0', 'layer1' or 'other' (embeddings, final norm)."""
    parts = set()
    for n, p in model.named_parameters():
        if not torch.equal(p, before[n]):
            parts.add(f"layer{n.split('.')[2]}" if n.startswith("model.layers.") else "other")
    return parts


def phases(model, optimizer, batch, count: int, every: int) -> tuple[list[set[str]], list[float]]:
    """Run ``count`` phases of BAdam's schedule; the parts that changed in each, and all losses.

    badam 1.4 switches after the step where ``global_step + 1`` is a multiple of ``every``, so the
    first block gets ``every - 1`` steps and each later one ``every``.
    """
    changed, losses = [], []
    for index in range(count):
        before = snapshot(model)
        losses += [optimizer_step(model, optimizer, batch) for _ in range(max(every - (index == 0), 1))]
        changed.append(changed_parts(model, before))
    return changed, losses


def test_contract():
    rows = check_plugin_contract("factory-plugin-badam")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"optimizers": ["badam"]}


def test_registered_through_entry_point():
    assert factory.get_manager().load("optimizers", "badam") is BADAM


def test_ascending_trains_one_layer_per_phase_and_lowers_the_loss(model, batch):
    optimizer = BADAM.create(model, config("badam.switch_every=3"), groups_of(model))
    changed, losses = phases(model, optimizer, batch, count=4, every=3)
    assert changed == [{"layer0"}, {"layer1"}, {"layer0"}, {"layer1"}]
    assert len(losses) == 11 and losses[-1] < losses[0] - 0.3, losses
    # only the active block asks for gradients (that is where BAdam saves memory)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["badam.switch_mode=descending"], [{"layer1"}, {"layer0"}, {"layer1"}]),
        (["badam.switch_mode=ascending", "badam.start_block=1"], [{"layer1"}, {"layer0"}, {"layer1"}]),
        (["badam.switch_mode=fixed", "badam.start_block=1"], [{"layer1"}, {"layer1"}, {"layer1"}]),
    ],
)
def test_switch_modes(overrides, expected, model, batch):
    optimizer = BADAM.create(model, config("badam.switch_every=2", *overrides), groups_of(model))
    assert phases(model, optimizer, batch, count=3, every=2)[0] == expected


def test_random_mode_visits_every_block_once_per_round(model, batch):
    optimizer = BADAM.create(model, config("badam.switch_every=1", "badam.switch_mode=random"), groups_of(model))
    changed = phases(model, optimizer, batch, count=4, every=1)[0]
    assert all(len(c) == 1 for c in changed)
    assert changed[0] | changed[1] == {"layer0", "layer1"} and changed[2] | changed[3] == {"layer0", "layer1"}


def test_embedding_and_head_blocks(model, batch):
    optimizer = BADAM.create(
        model,
        config("badam.switch_every=1", "badam.include_embedding=true", "badam.include_lm_head=true"),
        groups_of(model),
    )
    assert optimizer.block_prefix_list == [
        ["model.embed_tokens."],
        ["model.layers.0."],
        ["model.layers.1."],
        ["model.norm.weight"],
    ]
    changed = phases(model, optimizer, batch, count=4, every=1)[0]
    assert changed == [{"other"}, {"layer0"}, {"layer1"}, {"other"}]


def test_freeze_limits_badam_to_the_trained_layers(model, batch):
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("model.layers.1."))
    optimizer = BADAM.create(model, config("method=freeze", "badam.switch_every=2"), groups_of(model))
    assert optimizer.block_prefix_list == [["model.layers.1."]]
    assert phases(model, optimizer, batch, count=2, every=2)[0] == [{"layer1"}, {"layer1"}]


def test_verbose_is_honoured(model, batch, capsys):
    optimizer = BADAM.create(model, config("badam.switch_every=1"), groups_of(model))
    optimizer_step(model, optimizer, batch)
    assert "will be trainable" not in capsys.readouterr().out
    optimizer = BADAM.create(model, config("badam.switch_every=1", "badam.verbose=1"), groups_of(model))
    optimizer_step(model, optimizer, batch)
    assert "will be trainable" in capsys.readouterr().out


def test_resume_continues_the_schedule_exactly(tiny_causal_lm, batch):
    """Four steps, a checkpoint reloaded as the Trainer does, four more steps: the same weights as eight
    uninterrupted steps. The checkpoint falls inside layer 1's phase and the learning rate decays every step."""
    cfg = config("badam.switch_every=3")
    check_optimizer_reload(
        tiny_causal_lm, lambda model: BADAM.create(model, cfg, groups_of(model)), batch, before=4, after=4
    )


def test_start_block_beyond_the_model(model):
    with pytest.raises(ConfigError, match=r"badam.start_block=5 but the model has 2 blocks; choose one from 0 to 1"):
        BADAM.create(model, config("badam.start_block=5"), groups_of(model))


def test_no_layer_to_train(model):
    for name, param in model.named_parameters():
        param.requires_grad_("embed" in name)
    with pytest.raises(ConfigError, match="badam found no decoder layers"):
        BADAM.create(model, config("method=freeze"), groups_of(model))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["badam.switch_every=0"], "config key 'badam.switch_every'"),
        (["badam.switch_mode=sideways"], "config key 'badam.switch_mode'"),
        (["badam.start_block=-1"], "config key 'badam.start_block'"),
        (["badam.switch_mode=fixed"], "config section 'badam': badam.switch_mode fixed trains one block only"),
        (["badam.switch_mode=random", "badam.start_block=0"], "config section 'badam': badam.switch_mode random draws"),
        (["badam.switch_evry=3"], "unknown config key 'badam.switch_evry'; did you mean 'badam.switch_every'?"),
    ],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, override)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message and ". " not in message, message


def test_callbacks_only_for_deepspeed(tmp_path):
    assert BADAM.callbacks(config()) == []
    callbacks = BADAM.callbacks(config(f"deepspeed={tmp_path / 'zero3.json'}"))
    assert [type(c) for c in callbacks] == [BAdamCallback]


def ratio_config(*overrides: str) -> factory.RunConfig:
    return config("badam.mode=ratio", "max_grad_norm=0", "weight_decay=0", *overrides)


@pytest.mark.parametrize("mask_mode", ["adjacent", "scatter"])
def test_ratio_mode_steps_equal_badam_built_directly(mask_mode, tiny_causal_lm, batch):
    """The same steps as badam's BlockOptimizerRatio built as its README says (which needs include_lm_head on a
    model with tied embeddings, or it fails looking for a head), and the global generator left alone."""
    from badam import BlockOptimizerRatio

    cfg = ratio_config("badam.update_ratio=0.25", "badam.switch_every=2", f"badam.mask_mode={mask_mode}")
    ours_model, theirs_model = (AutoModelForCausalLM.from_pretrained(tiny_causal_lm) for _ in range(2))
    torch.manual_seed(5)
    ours = BADAM.create(ours_model, cfg, groups_of(ours_model))
    torch.manual_seed(5)
    theirs = BlockOptimizerRatio(
        groups_of(theirs_model),
        list(theirs_model.named_parameters()),
        update_ratio=0.25,
        switch_every=2,
        mask_mode=mask_mode,
        lr=3e-3,
        include_lm_head=True,
    )
    start = snapshot(ours_model)
    torch.manual_seed(9)
    for _ in range(4):
        optimizer_step(ours_model, ours, batch)
    ours_draw = torch.rand(1)
    expected_draw = torch.rand(1, generator=torch.Generator().manual_seed(9))
    for _ in range(4):
        optimizer_step(theirs_model, theirs, batch)
    for (n, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        assert torch.equal(a, b), n
    assert torch.equal(ours_draw, expected_draw)  # our steps did not re-seed torch's generator
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    changed = (dict(ours_model.named_parameters())[q_proj] != start[q_proj]).float().mean().item()
    assert (
        0.25 <= changed < 0.8
    )  # a quarter of the entries per phase (badam re-draws masks shared by shape as it switches)
    assert torch.equal(ours_model.model.embed_tokens.weight, start["model.embed_tokens.weight"])  # embeddings stay out


def test_ratio_mode_resumes_exactly(tiny_causal_lm, batch):
    """The checkpoint (inside the second phase) restores the masks' generator: the reloaded side starts from
    another global seed."""
    cfg = ratio_config("badam.update_ratio=0.2", "badam.switch_every=3", "badam.mask_mode=scatter")
    check_optimizer_reload(
        tiny_causal_lm, lambda model: BADAM.create(model, cfg, groups_of(model)), batch, before=4, after=4
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "gradient_accumulation_steps=2",
            "gradients cannot accumulate over gradient_accumulation_steps=2; set it to 1",
        ),
        ("max_grad_norm=1.0", "so max_grad_norm=1.0 cannot apply; set max_grad_norm=0"),
        ("weight_decay=0.1", "so weight_decay=0.1 cannot apply; set weight_decay=0"),
        ("nproc=2", "it trains in one process only; drop nproc, deepspeed and fsdp or use badam.mode=layer"),
    ],
)
def test_ratio_mode_refuses_before_loading(override, expected, tmp_path):
    args = [
        "method=full",
        "optimizer=badam",
        "badam.mode=ratio",
        "max_grad_norm=0",
        "weight_decay=0",
        f"output_dir={tmp_path / 'o'}",
    ]
    with pytest.raises(ConfigError) as err:
        factory.finetune(None, [*args, override])
    message = str(err.value)
    assert message.startswith("badam.mode=ratio turns each gradient into a sparse one inside backward")
    assert expected in message and "\n" not in message and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["badam.mode=ratio", "badam.switch_mode=descending"], "badam.mode ratio updates part of every weight"),
        (["badam.update_ratio=0.1"], "badam.update_ratio and badam.mask_mode belong to badam.mode ratio"),
        (["badam.mode=ratio", "badam.update_ratio=0"], "config key 'badam.update_ratio'"),
    ],
)
def test_ratio_options_are_checked(overrides, expected):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_ratio_mode_trains_and_resumes_through_finetune(tiny_causal_lm, tmp_path):
    """Through the Trainer, which measures the gradient norm after every backward (so the sparse gradients must
    wait in the optimizer): the loss falls, and a run resumed half-way ends with the uninterrupted run's weights."""
    check_optimizer_resume(
        tmp_path,
        tiny_causal_lm,
        DEMO_DIR,
        "optimizer=badam",
        "badam.mode=ratio",
        "badam.update_ratio=0.3",
        "badam.switch_every=3",
        "max_grad_norm=0",
        "weight_decay=0",
    )
