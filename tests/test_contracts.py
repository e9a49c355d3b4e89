"""The typed contract of every plugin kind: checked at registration, documented from the code, isolated on failure."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

import factory
from factory import contracts
from factory.errors import PluginError
from factory.hookspecs import KINDS
from factory.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"


def fresh() -> PluginManager:
    return PluginManager(entry_points=False, use_env=False)


def plugin(**hooks) -> SimpleNamespace:
    """A plugin object whose hooks are ``register_<kind>`` functions."""
    return SimpleNamespace(**{name: factory.hookimpl(function) for name, function in hooks.items()})


class GoodAdapter:
    def apply(self, model, cfg):
        return model

    def save(self, model, output_dir):
        pass


class NoSave:
    def apply(self, model, cfg):
        return model


class ShortApply:
    def apply(self, model):
        return model

    def save(self, model, output_dir):
        pass


# -- the guide cannot drift ------------------------------------------------------------------------


def test_the_guide_carries_the_contracts_generated_from_the_code():
    text = GUIDE.read_text(encoding="utf-8")
    generated = re.search(
        r"<!-- generated from core/contracts.py[^\n]*-->\n(.*?)<!-- end of generated contracts -->", text, re.S
    )
    assert generated, "docs/plugins.md lost its generated contract table"
    assert generated.group(1) == contracts.markdown(), "regenerate the table with factory.contracts.markdown()"


def test_every_hook_kind_has_a_contract():
    assert set(contracts.CONTRACTS) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_hook_is_documented_implemented_and_tested(kind):
    """As datasette does for its hooks: a hook nobody documents, implements or tests is a hook that rots."""
    assert f"`register_{kind}`" in GUIDE.read_text(encoding="utf-8")
    names = factory.get_manager().names(kind)
    assert names, f"no installed plugin implements register_{kind}"
    texts = [
        path.read_text(encoding="utf-8")
        for path in [*ROOT.glob("tests/*.py"), *ROOT.glob("plugins/*/tests/*.py")]
        if path.name != "test_contracts.py"
    ]
    spelled = [f"register_{kind}", *(f'"{name}"' for name in names), *(f"={name}" for name in names)]
    assert any(word in text for text in texts for word in spelled), (
        f"no test exercises register_{kind} or any of {names}"
    )


def test_every_registered_name_appears_in_the_listing():
    manager = factory.get_manager()
    listed = {(kind, name) for row in manager.listing() for kind, names in row["provides"].items() for name in names}
    registered = {(kind, name) for kind in KINDS for name in manager.names(kind)}
    assert registered <= listed


# -- checking implementations ----------------------------------------------------------------------


def test_a_conforming_implementation_has_no_problems():
    assert contracts.problems("adapters", GoodAdapter()) == []


def test_a_missing_member_is_named():
    assert contracts.problems("adapters", NoSave()) == ["has no method 'save'"]
    assert contracts.problems("stages", SimpleNamespace(run=lambda cfg, manager: {})) == [
        "has no attribute 'data_kind'"
    ]


def test_a_method_that_cannot_take_the_core_arguments_is_named():
    [problem] = contracts.problems("adapters", ShortApply())
    assert problem.startswith("'apply' must accept (model, cfg), but its signature is (model)")


def test_optional_members_may_be_absent_but_not_broken():
    assert (
        contracts.problems(
            "quantizers",
            SimpleNamespace(
                before_load=lambda cfg, kw: None, after_load=lambda m, cfg: m, export=lambda m, t, d, cfg: None
            ),
        )
        == []
    )
    broken = SimpleNamespace(
        before_load=lambda cfg, kw: None,
        after_load=lambda m, cfg: m,
        export=lambda m, t, d, cfg: None,
        check_trainable="yes",
    )
    assert contracts.problems("quantizers", broken) == ["'check_trainable' is a str, not a method"]


def test_keyword_arguments_the_core_passes_are_required():
    def evaluate(cfg, manager):  # lacks loaded=, engine=, progress=
        return None

    [problem] = contracts.problems("evaluators", SimpleNamespace(evaluate=evaluate))
    assert "must accept (cfg, manager, loaded=, engine=, progress=)" in problem


def test_an_engine_must_subclass_the_engine_base():
    assert contracts.problems("engines", object) == ["is a type, not a subclass of factory.plugin_api.Engine"]


# -- registration and isolation -------------------------------------------------------------------


def test_an_eager_implementation_breaking_its_contract_fails_its_plugin_only():
    manager = fresh()
    record = manager.register_plugin(plugin(register_adapters=lambda register: register("nosave", NoSave())), "bad")
    assert record.error == (
        "method 'nosave' from (local) breaks its contract: it has no method 'save' "
        "(see the adapters contract in docs/plugins.md)"
    )
    assert "nosave" not in manager.names("adapters") and "lora" not in manager.names(
        "adapters"
    )  # peft is not in a fresh manager
    assert manager.get("adapters", "full").plugin == "builtin-methods"


def test_a_lazy_implementation_is_checked_when_first_loaded():
    manager = fresh()
    manager.register_plugin(
        plugin(register_adapters=lambda register: register("lazy", "test_contracts:NoSave")), "lazy"
    )
    with pytest.raises(
        PluginError, match="method 'lazy' from \\(local\\) breaks its contract: it has no method 'save'"
    ):
        manager.load("adapters", "lazy")


class RequiredOption(BaseModel):
    token: str  # no default: every config load would fail without it


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        (
            lambda register: register("needy", GoodAdapter(), options=RequiredOption),
            "method 'needy' of plugin 'p' has options that do not validate with no settings (token: Field required); "
            "give every option a default",
        ),
        (
            lambda register: (_ for _ in ()).throw(RuntimeError("the hook fell over")),
            "RuntimeError: the hook fell over",
        ),
        (lambda register: register(123, GoodAdapter()), "method name 123 is invalid"),
        (lambda register: register("x", GoodAdapter(), colour="red"), "TypeError: "),
        (lambda register: register("x", GoodAdapter(), options=dict), "gives options=<class 'dict'>"),
    ],
    ids=["required option", "hook raises", "bad name", "unknown keyword", "options not a model"],
)
def test_a_plugin_failing_at_load_is_reported_and_skipped(hook, error):
    manager = fresh()
    record = manager.register_plugin(plugin(register_adapters=hook), "p")
    assert record.error is not None and error in record.error
    row = next(row for row in manager.listing() if row["name"] == "p")
    assert row["status"].startswith("failed to load") and row["provides"] == {}
    assert "needy" not in manager.sections() and "full" in manager.names("adapters")
    manager.sections()  # every other run's config still builds


def test_loaders_are_asked_by_priority_under_auto(tmp_path):
    from factory.config import load_config
    from factory.model.loader import pick_loader

    class Claims:
        priority = 100

        def can_load(self, source):
            return source.startswith("acme:")

        def load(self, source, cfg, model_kwargs):
            raise AssertionError("not loaded in this test")

    class ClaimsLater(Claims):
        priority = -5

        def can_load(self, source):
            return True

    manager = fresh()
    manager.register_plugin(
        plugin(register_loaders=lambda register: (register("acme", Claims()), register("zz", ClaimsLater()))), "l"
    )
    cfg = load_config(None, ["model=acme:thing"])
    assert isinstance(pick_loader(cfg, manager), Claims)
    cfg = load_config(None, [f"model={tmp_path}"])  # no built-in loader takes an empty folder; the last resort does
    assert isinstance(pick_loader(cfg, manager), ClaimsLater)


def test_patches_decide_by_facts_and_two_that_disagree_are_refused():
    from factory.model.facts import ModelFacts

    first = ModelFacts().combine(ModelFacts(attn_implementation="flash_attention_2", padding_free=True), "flash-attn")
    assert (first.attn_implementation, first.padding_free) == ("flash_attention_2", True)
    assert first.combine(ModelFacts(padding_free=True), "another").padding_free is True  # agreeing is fine
    with pytest.raises(
        PluginError,
        match="patches 'flash-attn' and 's2attn' disagree on attn_implementation "
        "\\('flash_attention_2' against 's2attn'\\); use one of them",
    ):
        first.combine(ModelFacts(attn_implementation="s2attn", padding_free=False), "s2attn")
    with pytest.raises(PluginError, match="patch 'odd' returned 5 from before_load"):
        first.combine(5, "odd")


def test_two_patches_replacing_the_same_thing_are_refused():
    from factory.model.facts import ModelFacts

    liger = ModelFacts().combine(ModelFacts(replaces=("rms_norm", "mlp", "loss")), "liger")
    assert liger.owners == {"rms_norm": "liger", "mlp": "liger", "loss": "liger"}
    assert liger.combine(ModelFacts(replaces=("attention",)), "flash").replaces == (
        "rms_norm",
        "mlp",
        "loss",
        "attention",
    )
    with pytest.raises(PluginError, match="patches 'liger' and 'other' both replace loss; use one of them"):
        liger.combine(ModelFacts(replaces=("loss",)), "other")
