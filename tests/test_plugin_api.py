"""The plugin API is the one surface plugins import from factory."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import factory.plugin_api as api

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted(ROOT.glob("plugins/*/factory_plugin_*/**/*.py"))
# What a plugin package may import of factory: the plugin API, and the user-facing top level.
ALLOWED = {"factory", "factory.plugin_api"}


def _factory_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "factory":  # `from factory import x` must name a top-level export
                names += [f"factory.{alias.name}" for alias in node.names if alias.name not in api.__all__]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "factory" or name.startswith("factory.")]
    return found


def test_plugins_import_factory_only_through_the_plugin_api():
    assert PLUGIN_SOURCES, "no plugin sources found"
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in PLUGIN_SOURCES
        for line, name in _factory_imports(path)
        if name not in ALLOWED
    ]
    assert offending == []


def test_the_checker_sees_a_deep_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from factory.model.loader import load_model\n", encoding="utf-8")
    assert _factory_imports(bad) == [(2, "factory.model.loader")]


@pytest.mark.parametrize("name", sorted(set(api.__all__)))
def test_every_exported_name_resolves(name):
    assert getattr(api, name) is not None


def test_unknown_name_is_one_sentence():
    with pytest.raises(AttributeError, match="factory.plugin_api has no 'nope'"):
        api.nope  # noqa: B018


def test_importing_the_plugin_api_does_not_import_torch():
    code = "import sys, factory.plugin_api; from factory.plugin_api import RunConfig, Requires; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
