"""The plugin manager: registration, validation, isolation of broken plugins, conflicts, requirements."""

from __future__ import annotations

import sys
import types

import pytest
from pydantic import BaseModel, Field

import factory
from factory import hardware
from factory.errors import PluginError
from factory.plugins import PluginManager


def make_plugin(name: str, **hooks) -> types.ModuleType:
    """A module object carrying the given hook functions, marked as factory hook implementations."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, factory.hookimpl(fn))
    return module


class Method:
    """The least an adapter must provide (see factory.contracts.Adapter)."""

    def apply(self, model, cfg):
        return model

    def save(self, model, output_dir):
        pass


class Quantizer:
    def before_load(self, cfg, model_kwargs):
        pass

    def after_load(self, model, cfg):
        return model

    def export(self, model, tokenizer, output_dir, cfg):
        pass


def registers(kind_name: str, *items):
    def hook(register):
        for args, kwargs in items:
            register(*args, **kwargs)

    return {f"register_{kind_name}": hook}


def test_builtins_are_registered_like_plugins(plugin_manager):
    impl = plugin_manager.get("adapters", "full")
    assert impl.distribution == "factory-core"
    assert impl.plugin.startswith("builtin-")
    rows = {row["name"]: row for row in plugin_manager.listing()}
    assert "full" in rows[impl.plugin]["provides"]["adapters"]


def test_third_party_plugin_registers_with_attribution(plugin_manager):
    plugin = make_plugin("p", **registers("adapters", (("mine", Method()), {"description": "d"})))
    plugin_manager.register_plugin(plugin, "mine-plugin", "factory-plugin-mine", "2.0")
    impl = plugin_manager.get("adapters", "mine")
    assert (impl.plugin, impl.distribution, impl.version) == ("mine-plugin", "factory-plugin-mine", "2.0")
    assert "mine" in plugin_manager.names("adapters")


def test_misspelled_hook_is_refused_naming_the_plugin(plugin_manager):
    plugin = make_plugin("p", register_adaptors=lambda register: None)
    record = plugin_manager.register_plugin(plugin, "typo")
    assert "plugin 'typo'" in record.error
    assert "did you mean 'register_adapters'" in record.error


def test_misspelled_hook_argument_is_refused(plugin_manager):
    plugin = make_plugin("p", register_stages=lambda registr: None)
    record = plugin_manager.register_plugin(plugin, "argtypo")
    assert "register_stages(registr)" in record.error and "'register'" in record.error


def test_plugin_whose_hook_raises_is_recorded_and_rolled_back(plugin_manager):
    def hook(register):
        register("half-done", Method())
        raise RuntimeError("boom in hook")

    plugin_manager.register_plugin(make_plugin("p", register_adapters=hook), "bad", "bad-dist")
    good = make_plugin("q", **registers("adapters", (("fine", Method()), {})))
    plugin_manager.register_plugin(good, "good")
    assert plugin_manager.records["bad"].error == "RuntimeError: boom in hook"
    assert "half-done" not in plugin_manager.names("adapters")
    assert plugin_manager.get("adapters", "fine").plugin == "good"
    status = {row["name"]: row["status"] for row in plugin_manager.listing()}
    assert status["bad"] == "failed to load: RuntimeError: boom in hook"
    assert status["good"] == "ok"


def test_duplicate_names_are_an_error_naming_both_distributions(plugin_manager):
    for plugin, dist in (("one", "dist-one"), ("two", "dist-two")):
        plugin_manager.register_plugin(
            make_plugin(plugin, **registers("adapters", (("same", Method()), {}))), plugin, dist
        )
    with pytest.raises(PluginError) as err:
        plugin_manager.get("adapters", "same")
    message = str(err.value)
    assert "dist-one" in message and "dist-two" in message and "plugins.prefer" in message
    status = {row["name"]: row["status"] for row in plugin_manager.listing()}
    assert status["one"].startswith("conflict:") and "dist-two" in status["one"]


def test_preference_settles_a_duplicate():
    manager = PluginManager(entry_points=False, use_env=False, prefer={"adapters.same": "dist-two"})
    for plugin, dist in (("one", "dist-one"), ("two", "dist-two")):
        manager.register_plugin(make_plugin(plugin, **registers("adapters", (("same", Method()), {}))), plugin, dist)
    assert manager.get("adapters", "same").distribution == "dist-two"
    assert not manager.conflicts()


def test_preference_env_variable(monkeypatch):
    monkeypatch.setenv("FACTORY_PREFER", "adapters.same=dist-one")
    manager = PluginManager(entry_points=False)
    for plugin, dist in (("one", "dist-one"), ("two", "dist-two")):
        manager.register_plugin(make_plugin(plugin, **registers("adapters", (("same", Method()), {}))), plugin, dist)
    assert manager.get("adapters", "same").distribution == "dist-one"


def test_malformed_preference_env_is_one_sentence(monkeypatch):
    monkeypatch.setenv("FACTORY_PREFER", "lora-is-best")
    with pytest.raises(PluginError, match="'lora-is-best' is malformed; write KIND.NAME=DISTRIBUTION"):
        PluginManager(entry_points=False)


@pytest.mark.parametrize("via", ["config", "env"])
def test_plugins_can_be_disabled_by_name(monkeypatch, via):
    if via == "env":
        monkeypatch.setenv("FACTORY_DISABLE_PLUGINS", "builtin-methods, other")
        manager = PluginManager(entry_points=False)
    else:
        manager = PluginManager(entry_points=False, use_env=False, disable=["builtin-methods"])
    assert "full" not in manager.names("adapters")
    row = next(r for r in manager.listing() if r["name"] == "builtin-methods")
    assert row["status"] == "disabled"
    assert ("FACTORY_DISABLE_PLUGINS" if via == "env" else "config") in row["reason"]


def test_unknown_name_lists_registered_ones(plugin_manager):
    with pytest.raises(PluginError) as err:
        plugin_manager.get("adapters", "ful")
    assert "unknown method 'ful'; did you mean 'full'?" in str(err.value)
    assert "registered: " in str(err.value) and "freeze" in str(err.value)


def test_first_party_name_not_installed_says_what_to_install(plugin_manager):
    with pytest.raises(
        PluginError, match="comes from factory-plugin-peft, which is not installed; pip install factory-plugin-peft"
    ):
        plugin_manager.get("adapters", "dora")


def test_requirements_missing_package(plugin_manager):
    reqs = factory.Requires(packages=("surely-not-installed-pkg>=1",))
    plugin = make_plugin("p", **registers("quantizers", (("q", Quantizer()), {"requires": reqs})))
    plugin_manager.register_plugin(plugin, "qp")
    with pytest.raises(PluginError) as err:
        plugin_manager.require("quantizers", "q")
    assert "needs the package 'surely-not-installed-pkg>=1'" in str(err.value)
    row = next(r for r in plugin_manager.listing() if r["name"] == "qp")
    assert row["status"].startswith("unavailable: needs the package")


def test_requirements_version_too_old(plugin_manager):
    reqs = factory.Requires(packages=("pluggy>=999",))
    assert "but pluggy" in reqs.unmet() and "is installed" in reqs.unmet()
    assert factory.Requires(packages=("pluggy>=1",)).unmet() is None


def test_requirements_device(monkeypatch):
    reqs = factory.Requires(device="cuda", min_compute_capability=(8, 0))
    monkeypatch.setattr(hardware, "cuda_devices", lambda: ())
    assert reqs.unmet() == "needs a CUDA GPU with compute capability >= 8.0; none was found on this machine"
    monkeypatch.setattr(hardware, "cuda_devices", lambda: (hardware.CudaDevice("T4", (7, 5)),))
    assert "the best here has 7.5" in reqs.unmet()
    monkeypatch.setattr(hardware, "cuda_devices", lambda: (hardware.CudaDevice("A100", (8, 0)),))
    assert reqs.unmet() is None


def test_min_capability_implies_cuda():
    assert factory.Requires(min_compute_capability=(7, 0)).device == "cuda"


def test_invalid_requirement_string_is_refused():
    with pytest.raises(PluginError, match="not a valid package requirement"):
        factory.Requires(packages=("not a requirement!!",))


def test_lazy_target_is_imported_only_on_load(plugin_manager, tmp_path, monkeypatch):
    (tmp_path / "lazy_impl_mod.py").write_text(
        "class Impl:\n    value = 42\n    def create(self, cfg):\n        return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = make_plugin("p", **registers("callbacks", (("lazy", "lazy_impl_mod:Impl"), {})))
    plugin_manager.register_plugin(plugin, "lazy")
    assert "lazy_impl_mod" not in sys.modules
    assert plugin_manager.load("callbacks", "lazy").value == 42


def test_lazy_target_import_error_is_a_plugin_error(plugin_manager):
    plugin = make_plugin("p", **registers("engines", (("ghost", "no_such_module_x:Impl"), {})))
    plugin_manager.register_plugin(plugin, "ghost-plugin", "ghost-dist")
    with pytest.raises(PluginError, match="engine 'ghost' from ghost-dist failed to import 'no_such_module_x:Impl'"):
        plugin_manager.load("engines", "ghost")


def test_options_must_be_pydantic(plugin_manager):
    plugin = make_plugin("p", **registers("adapters", (("x", Method()), {"options": dict})))
    record = plugin_manager.register_plugin(plugin, "opt")
    assert "options must be a pydantic BaseModel subclass" in record.error


def test_bad_implementation_name_is_refused(plugin_manager):
    plugin = make_plugin("p", **registers("adapters", (("Bad Name", Method()), {})))
    record = plugin_manager.register_plugin(plugin, "badname")
    assert "'Bad Name' is invalid" in record.error


def test_two_plugins_claiming_one_section_with_different_models(plugin_manager):
    class A(BaseModel):
        x: int = 1

    class B(BaseModel):
        y: int = Field(2)

    plugin_manager.register_plugin(
        make_plugin("a", **registers("adapters", (("a1", Method()), {"options": A, "section": "shared"}))),
        "pa",
        "dist-a",
    )
    plugin_manager.register_plugin(
        make_plugin("b", **registers("adapters", (("b1", Method()), {"options": B, "section": "shared"}))),
        "pb",
        "dist-b",
    )
    assert "shared" not in plugin_manager.sections()  # left out, so configs that do not use it still build
    assert plugin_manager.section_conflicts()["shared"] == (
        "config section 'shared' is claimed with different options by dist-a and dist-b; disable one of them"
    )


def test_unknown_kind(plugin_manager):
    with pytest.raises(PluginError, match="unknown plugin kind 'adapter'; did you mean 'adapters'"):
        plugin_manager.get("adapter", "full")


def test_missing_gpu_is_reported_before_missing_packages(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_devices", lambda: ())
    reqs = factory.Requires(packages=("surely-not-installed-pkg",), device="cuda")
    assert reqs.unmet() == "needs a CUDA GPU; none was found on this machine"
