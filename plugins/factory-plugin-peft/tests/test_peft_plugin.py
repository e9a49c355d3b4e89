"""factory-plugin-peft against its contract, peft's own behaviour and plain-torch training."""

from __future__ import annotations

import pytest
import torch
from factory_plugin_peft import methods
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import factory
from factory.errors import ConfigError
from factory.model.modules import linear_module_names
from factory.testing import build_tiny_causal_lm, check_plugin_contract

METHODS = ["lora", "dora", "rslora", "pissa", "loraplus"]
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def method(name: str) -> methods.LoraMethod:
    return getattr(methods, name.upper())


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, ["learning_rate=1e-2", *overrides])


def base(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 300, (4, 24), generator=generator)


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def train(model, groups, cfg, batch, steps: int = 10) -> list[float]:
    """A plain torch loop over the fixed batch; returns the losses."""
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def groups_of(name: str, model, cfg) -> list[dict]:
    impl = method(name)
    if hasattr(impl, "param_groups"):
        return impl.param_groups(model, cfg)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message and "Traceback" not in message


def test_contract():
    rows = check_plugin_contract("factory-plugin-peft")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"adapters": sorted([*METHODS, "oft"])}


def test_registered_through_entry_point():
    manager = factory.get_manager()
    for name in METHODS:
        impl = manager.get("adapters", name)
        assert impl.distribution == "factory-plugin-peft" and impl.section == "lora"
        assert manager.load("adapters", name) is method(name)


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_only_the_adapter(name, tiny_causal_lm, batch):
    # LoRA+ trains B 16x faster, so it needs a smaller base learning rate (as its paper advises)
    cfg = config("lora.rank=4", "learning_rate=2e-3" if name == "loraplus" else "learning_rate=1e-2")
    model = method(name).apply(base(tiny_causal_lm), cfg)
    assert isinstance(model, PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    if name == "dora":
        expected |= {n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n}
    assert trainable == expected and len(expected) >= 2 * 7 * 2

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, groups_of(name, model, cfg), cfg, batch)
    assert losses[-1] < losses[0] - 0.3, losses
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in trainable), f"{n} changed={changed}"


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("lora", "use_dora", False),
        ("dora", "use_dora", True),
        ("rslora", "use_rslora", True),
        ("pissa", "init_lora_weights", "pissa_niter_4"),
        ("loraplus", "init_lora_weights", True),
    ],
)
def test_variant_reaches_peft(name, field, value, tiny_causal_lm):
    cfg = config("lora.rank=4", "lora.alpha=8")
    model = method(name).apply(base(tiny_causal_lm), cfg)
    peft_config = model.peft_config["default"]
    assert getattr(peft_config, field) == value
    assert peft_config.r == 4 and peft_config.lora_alpha == 8
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / 2 if name == "rslora" else 8 / 4)


def test_pissa_moves_the_principal_part_into_the_adapter(tiny_causal_lm, batch):
    original = base(tiny_causal_lm)
    reference = logits(original, batch)
    weight = original.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = methods.PISSA.apply(original, config("lora.rank=4"))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert not torch.allclose(q_proj.base_layer.weight, weight)  # the base is now the residual
    delta = q_proj.lora_B["default"].weight @ q_proj.lora_A["default"].weight * q_proj.scaling["default"]
    torch.testing.assert_close(q_proj.base_layer.weight + delta, weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-4, rtol=0)


def test_default_alpha_is_twice_the_rank(tiny_causal_lm):
    model = methods.LORA.apply(base(tiny_causal_lm), config("lora.rank=4"))
    assert model.peft_config["default"].lora_alpha == 8


@pytest.mark.parametrize("name", ["lora", "dora", "rslora", "pissa"])
def test_saved_adapter_reproduces_the_trained_model(name, tiny_causal_lm, batch, tmp_path):
    cfg = config("lora.rank=4")
    impl = method(name)
    model = impl.apply(base(tiny_causal_lm), cfg)
    train(model, groups_of(name, model, cfg), cfg, batch, steps=3)
    trained = logits(model, batch)
    impl.save(model, str(tmp_path))

    reloaded = PeftModel.from_pretrained(base(tiny_causal_lm), str(tmp_path))
    if name == "pissa":  # saved as plain LoRA of rank 2r on the original base
        assert reloaded.peft_config["default"].r == 8
        assert reloaded.peft_config["default"].init_lora_weights is True
    # Equal up to rounding: the trained model computes q/k/v as one stacked matmul, peft layer by layer.
    torch.testing.assert_close(logits(reloaded, batch), trained, atol=1e-5, rtol=0)
    # the same through the method's own load, as chat/export use it
    loaded = impl.load(base(tiny_causal_lm), str(tmp_path), cfg)
    torch.testing.assert_close(logits(loaded, batch), trained, atol=1e-5, rtol=0)


def test_pissa_save_leaves_the_model_training(tiny_causal_lm, batch, tmp_path):
    cfg = config("lora.rank=4")
    model = methods.PISSA.apply(base(tiny_causal_lm), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    methods.PISSA.save(model, str(tmp_path / "a"))
    assert list(model.peft_config) == ["default"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    losses = train(model, groups_of("pissa", model, cfg), cfg, batch, steps=3)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["lora", "dora", "pissa"])
def test_merge_equals_unmerged(name, tiny_causal_lm, batch):
    cfg = config("lora.rank=4")
    impl = method(name)
    model = impl.apply(base(tiny_causal_lm), cfg)
    train(model, groups_of(name, model, cfg), cfg, batch, steps=3)
    unmerged = logits(model, batch)
    merged = impl.merge(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), unmerged, atol=1e-5, rtol=0)


def test_loraplus_groups_scale_b(tiny_causal_lm):
    cfg = config("lora.loraplus_lr_ratio=8")
    model = methods.LORAPLUS.apply(base(tiny_causal_lm), cfg)
    groups = methods.LORAPLUS.param_groups(model, cfg)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(names)  # every trainable parameter once
    for n, p in names.items():
        assert lr_of[id(p)] == pytest.approx(1e-2 * 8 if ".lora_B." in n else 1e-2), n


def test_target_all_agrees_with_peft(tiny_causal_lm):
    model = base(tiny_causal_lm)
    assert linear_module_names(model) == LINEAR
    assert "lm_head" in linear_module_names(model, exclude_head=False)
    oracle = get_peft_model(base(tiny_causal_lm), LoraConfig(target_modules="all-linear"))
    found = {name.rsplit(".", 1)[-1] for name in oracle.peft_config["default"].target_modules}
    assert sorted(found) == LINEAR


def test_target_list_from_the_command_line(tiny_causal_lm):
    cfg = config("lora.target=q_proj,self_attn.v_proj")
    assert cfg.options("lora").target == ["q_proj", "self_attn.v_proj"]
    model = methods.LORA.apply(base(tiny_causal_lm), cfg)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_unknown_target_names_the_missing_and_the_linear_modules(tiny_causal_lm):
    cfg = factory.load_config(None, ["lora.target=[q_proj, qproj, mlp.up]"])
    with pytest.raises(ConfigError) as err:
        methods.LORA.apply(base(tiny_causal_lm), cfg)
    message = str(err.value)
    assert "lora.target" in message and "'qproj'" in message and "'mlp.up'" in message
    assert "'q_proj'" not in message and ", ".join(LINEAR) in message
    assert one_sentence(message), message


def test_unknown_modules_to_save(tiny_causal_lm):
    cfg = factory.load_config(None, ["lora.modules_to_save=[embed_token]"])
    with pytest.raises(ConfigError, match=r"lora.modules_to_save names 'embed_token'.*embed_tokens"):
        methods.LORA.apply(base(tiny_causal_lm), cfg)


def test_modules_to_save_train_save_and_stay_tied(tiny_causal_lm, batch, tmp_path):
    cfg = config("lora.modules_to_save=[embed_tokens]")
    model = methods.LORA.apply(base(tiny_causal_lm), cfg)
    assert any("embed_tokens" in n and p.requires_grad for n, p in model.named_parameters())
    train(model, groups_of("lora", model, cfg), cfg, batch, steps=3)
    trained = logits(model, batch)
    methods.LORA.save(model, str(tmp_path))
    reloaded = PeftModel.from_pretrained(base(tiny_causal_lm), str(tmp_path))
    torch.testing.assert_close(logits(reloaded, batch), trained, atol=1e-5, rtol=0)  # q/k/v stacked: rounding
    merged = methods.LORA.merge(model)  # the tiny model ties its input and output embeddings, and so must the merge
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(merged, batch), trained, atol=1e-5, rtol=0)


def test_pissa_refuses_what_it_cannot_save(tiny_causal_lm):
    with pytest.raises(ConfigError, match="method pissa cannot be combined"):
        methods.PISSA.apply(base(tiny_causal_lm), factory.load_config(None, ["lora.use_dora=true"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.rank=0", "lora.rank"),
        ("lora.rank=-2", "lora.rank"),
        ("lora.alpha=0", "lora.alpha"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("lora.loraplus_lr_ratio=0", "lora.loraplus_lr_ratio"),
        ("lora.target=[]", "lora.target"),
        ("lora.ranks=8", "lora.ranks"),
    ],
)
def test_bad_options_are_one_sentence(override, key):
    with pytest.raises(ConfigError) as err:
        factory.load_config(None, [override])
    message = str(err.value)
    assert message.startswith(f"config key '{key}'") or message.startswith(f"unknown config key '{key}'"), message
    assert one_sentence(message), message


def test_initialisation_follows_the_seed(tiny_causal_lm):
    def lora_a(seed: int) -> torch.Tensor:
        model = methods.LORA.apply(base(tiny_causal_lm), config(f"seed={seed}"))
        return model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight

    torch.manual_seed(123)  # the global RNG state must not matter
    first = lora_a(1)
    torch.manual_seed(456)
    assert torch.equal(lora_a(1), first)
    assert not torch.equal(lora_a(2), first)


def test_load_refuses_a_folder_without_an_adapter(tiny_causal_lm):
    with pytest.raises(ConfigError, match="is not a PEFT adapter folder"):
        methods.LORA.load(base(tiny_causal_lm), str(tiny_causal_lm), config())


def test_load_refuses_an_adapter_for_another_model(tiny_causal_lm, tmp_path, batch):
    cfg = config()
    methods.LORA.save(methods.LORA.apply(base(tiny_causal_lm), cfg), str(tmp_path / "adapter"))
    other = build_tiny_causal_lm(tmp_path / "wider", hidden=32)
    with pytest.raises(ConfigError) as err:
        methods.LORA.load(base(other), str(tmp_path / "adapter"), cfg)
    assert "does not fit the model" in str(err.value) and "\n" not in str(err.value)


def _step(model, batch, dtype=None):
    """Logits and every adapter gradient of one forward/backward (under bf16 autocast when ``dtype``)."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        out = model(batch, labels=batch)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.logits.detach().float(), grads.float()


def _adapted(path, *overrides, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    cfg = config("lora.rank=4", *overrides)
    adapted = method("lora").apply(model, cfg)
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))  # peft starts B at 0
        if param.requires_grad:
            param.data = param.data.float()
    return adapted


def test_fused_lora_layers_compute_what_peft_does(tiny_causal_lm, batch):
    fused, plain = _adapted(tiny_causal_lm), _adapted(tiny_causal_lm, "fused_ops=false")
    plain.load_state_dict(fused.state_dict())
    assert sum("_fused_forward" in str(m.__dict__.get("forward")) for m in fused.modules()) == len(LINEAR) * 2
    for a, b in zip(_step(fused, batch), _step(plain, batch)):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_lora_layers_in_bf16_match_peft_under_autocast(tiny_causal_lm, batch):
    fused = _adapted(tiny_causal_lm, dtype=torch.bfloat16)
    plain = _adapted(tiny_causal_lm, "fused_ops=false", dtype=torch.bfloat16)
    plain.load_state_dict(fused.state_dict())
    for a, b in zip(_step(fused, batch, torch.bfloat16), _step(plain, batch, torch.bfloat16)):
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


@pytest.mark.parametrize("case", ["dropout", "disabled", "fp32 base under autocast"])
def test_what_the_fused_layer_does_not_model_runs_peft(case, tiny_causal_lm, batch, monkeypatch):
    from factory_plugin_peft import fused

    calls = []
    monkeypatch.setattr(fused, "low_rank_linear", lambda *a: calls.append(1) or pytest.fail("fused path taken"))
    model = _adapted(tiny_causal_lm, *(["lora.dropout=0.1"] if case == "dropout" else []))
    if case == "disabled":  # how a DPO reference shares the policy's weights
        with model.disable_adapter(), torch.no_grad():
            model(batch)
    else:
        _step(model, batch, torch.bfloat16 if case.endswith("autocast") else None)
    assert calls == []


def test_a_partitioned_base_weight_is_left_to_peft(tiny_causal_lm):
    from factory_plugin_peft import fused

    layer = _adapted(tiny_causal_lm).base_model.model.model.layers[0].self_attn.q_proj
    x = torch.zeros(1, 2, layer.base_layer.in_features)
    assert fused._plain_adapter(layer, x, (), {}) == "default"
    layer.base_layer.weight.data = torch.empty(0)  # what DeepSpeed ZeRO-3 leaves outside the layer's forward
    assert fused._plain_adapter(layer, x, (), {}) is None


def _attention(model):
    return model.base_model.model.model.layers[0].self_attn


def test_q_k_v_run_as_one_stacked_matmul_over_one_weight(tiny_causal_lm, batch, monkeypatch):
    from factory_plugin_peft import fused

    model = _adapted(tiny_causal_lm)
    calls = []
    stacked = fused.stacked_low_rank_linear
    monkeypatch.setattr(
        fused,
        "stacked_low_rank_linear",
        lambda x, w, b, adapters: calls.append(len(adapters)) or stacked(x, w, b, adapters),
    )
    _step(model, batch)
    assert calls == [3] * model.config.num_hidden_layers
    attn = _attention(model)
    q, k, v = (attn.q_proj.base_layer.weight, attn.k_proj.base_layer.weight, attn.v_proj.base_layer.weight)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert k.data_ptr() == q.data_ptr() + q.nbytes and v.data_ptr() == k.data_ptr() + k.nbytes


def _peft_outputs(attn, inputs):
    with torch.no_grad():
        return [type(layer).forward(layer, x) for layer, x in zip((attn.q_proj, attn.k_proj, attn.v_proj), inputs)]


def test_q_k_v_reading_different_inputs_run_layer_by_layer(tiny_causal_lm):
    attn = _attention(_adapted(tiny_causal_lm))
    gen = torch.Generator().manual_seed(0)
    own, other = (torch.randn(1, 3, attn.q_proj.in_features, generator=gen) for _ in range(2))
    inputs = (own, other, other)  # cross-attention: queries from one tensor, keys and values from another
    with torch.no_grad():
        outputs = [layer(x) for layer, x in zip((attn.q_proj, attn.k_proj, attn.v_proj), inputs)]
    for got, want in zip(outputs, _peft_outputs(attn, inputs)):
        torch.testing.assert_close(got, want)
    assert attn.q_proj._shared_input.shared is False


def test_a_replaced_base_weight_leaves_the_stack(tiny_causal_lm):
    attn = _attention(_adapted(tiny_causal_lm))
    base = attn.k_proj.base_layer
    base.weight = torch.nn.Parameter(base.weight.detach() * 2, requires_grad=False)  # e.g. re-cast or moved
    x = torch.randn(1, 3, attn.q_proj.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [layer(x) for layer in (attn.q_proj, attn.k_proj, attn.v_proj)]
    for got, want in zip(outputs, _peft_outputs(attn, (x, x, x))):
        torch.testing.assert_close(got, want)
