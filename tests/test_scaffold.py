"""``factory plugins new``: every kind scaffolds an implementation that fulfils its contract, and an installed scaffold is listed and passes its own test."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from factory.cli import main
from factory.contracts import CONTRACTS, problems
from factory.errors import ConfigError
from factory.scaffold import scaffold


@pytest.mark.parametrize("kind", list(CONTRACTS))
def test_every_kind_scaffolds_an_implementation_of_its_contract(kind, tmp_path, monkeypatch, plugin_manager):
    name = f"acme-{kind.replace('_', '-')}"
    root = scaffold(name, kind, tmp_path)
    package = "factory_plugin_" + name.replace("-", "_")
    assert {p.name for p in root.iterdir()} == {"pyproject.toml", "README.md", package, "tests"}
    assert f'{name} = "{package}"' in (root / "pyproject.toml").read_text()
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(package)
    impl = importlib.import_module(f"{package}.impl").IMPL
    assert problems(kind, impl) == []
    plugin_manager.register_plugin(module, name)
    assert plugin_manager.load(kind, name) is impl


def test_an_installed_scaffold_is_listed_and_its_own_test_passes(tmp_path):
    """pip installs it into a folder of its own (no change to the venv); that folder on PYTHONPATH makes it installed."""
    assert main(["plugins", "new", "hello", "--kind", "commands", "--dir", str(tmp_path)]) == 0
    root, site = tmp_path / "factory-plugin-hello", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    factory_cli = [sys.executable, "-m", "factory.cli"]
    listed = subprocess.run(
        [*factory_cli, "plugins", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    row = next(r for r in json.loads(listed.stdout) if r["distribution"] == "factory-plugin-hello")
    assert (row["provides"], row["status"]) == ({"commands": ["hello"]}, "ok")
    said = subprocess.run(
        [*factory_cli, "hello", "--shout", "you"], env=env, capture_output=True, text=True, check=True
    )
    assert said.stdout.strip() == "HELLO, YOU"
    own = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert own.returncode == 0, own.stdout + own.stderr


@pytest.mark.parametrize(
    ("name", "kind", "says"),
    [
        ("Acme!", "adapters", "plugin name 'Acme!'"),
        ("acme", "adaptors", "plugin kind 'adaptors' does not exist; did you mean 'adapters'"),
    ],
)
def test_bad_name_or_kind_is_one_sentence(name, kind, says, tmp_path):
    with pytest.raises(ConfigError) as err:
        scaffold(name, kind, tmp_path)
    assert says in str(err.value) and list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "factory-plugin-acme").mkdir()
    (tmp_path / "factory-plugin-acme" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="already exists"):
        scaffold("acme", "adapters", tmp_path)
    assert [p.name for p in (tmp_path / "factory-plugin-acme").iterdir()] == ["mine.txt"]
