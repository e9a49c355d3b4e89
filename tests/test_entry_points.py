"""Real third-party distributions, installed from tests/fixtures/, found through the entry point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder where the fixture plugins are pip-installed (kept off the test environment itself)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            *(str(FIXTURES / name) for name in ("acme", "broken", "typo", "clash")),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def factory_cli(site: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, env=environ, check=False
    )


def listing(site: Path, env: dict | None = None) -> dict[str, dict]:
    proc = factory_cli(site, "plugins", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_installed_plugin_is_discovered_with_distribution_and_version(site):
    rows = listing(site)
    acme = rows["acme"]
    assert (acme["distribution"], acme["version"]) == ("acme-factory-plugin", "1.2.3")
    assert acme["provides"] == {
        "adapters": ["acme"],
        "aligners": ["acme-qa"],
        "commands": ["acme-hello"],
        "patches": ["acme-fast-kernels"],
    }


def test_broken_plugin_is_reported_and_others_survive(site):
    rows = listing(site)
    assert rows["broken"]["status"] == "failed to load: ImportError: acme_backend is not installed"
    assert rows["broken"]["distribution"] == "broken-factory-plugin"
    assert rows["typo"]["status"].startswith("failed to load: plugin 'typo' implements 'register_adaptors'")
    assert "did you mean 'register_adapters'" in rows["typo"]["status"]
    assert rows["builtin-methods"]["status"] == "ok"


def test_clash_is_reported_on_both_and_refused_at_use(site):
    rows = listing(site)
    assert rows["clash"]["status"] == "conflict: method 'acme' is also registered by acme-factory-plugin"
    assert rows["acme"]["status"] == "conflict: method 'acme' is also registered by clash-factory-plugin"
    proc = factory_cli(site, "finetune", "method=acme")
    assert proc.returncode == 2
    assert (
        "registered by both" in proc.stderr
        and "acme-factory-plugin" in proc.stderr
        and "clash-factory-plugin" in proc.stderr
    )


def test_disabling_a_plugin_by_environment(site):
    rows = listing(site, env={"FACTORY_DISABLE_PLUGINS": "clash"})
    assert rows["clash"]["status"] == "disabled"
    assert rows["acme"]["status"].startswith("unavailable") is False
    assert rows["acme"]["status"] == "ok"
    assert rows["acme"]["reason"].startswith("partly unavailable: acme-fast-kernels needs a CUDA GPU")


def test_plugin_options_are_validated_through_the_config(site):
    env = {"FACTORY_DISABLE_PLUGINS": "clash"}
    proc = factory_cli(site, "finetune", "method=acme", "acme.strength=2", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config key 'acme.strength': Input should be less than or equal to 1 (got 2)"


def test_gpu_only_patch_refused_before_loading(site):
    env = {"FACTORY_DISABLE_PLUGINS": "clash", "CUDA_VISIBLE_DEVICES": ""}
    proc = factory_cli(site, "finetune", "method=full", "patches=[acme-fast-kernels]", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: patch 'acme-fast-kernels' from acme-factory-plugin cannot run here: it needs a CUDA GPU "
        "with compute capability >= 8.0; none was found on this machine"
    )


def test_contract_check_accepts_acme_and_rejects_faulty_plugins(site):
    probe = (
        "import sys\nfrom factory.testing import check_plugin_contract\n"
        "print(check_plugin_contract('acme-factory-plugin')[0]['name'])\n"
        "for dist in ('broken-factory-plugin', 'typo-factory-plugin'):\n"
        "    try:\n        check_plugin_contract(dist)\n    except AssertionError as exc:\n        print('REJECTED', dist)\n"
    )
    environ = {**os.environ, "PYTHONPATH": str(site), "FACTORY_DISABLE_PLUGINS": "clash"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environ, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["acme", "REJECTED", "broken-factory-plugin", "REJECTED", "typo-factory-plugin"]


def test_a_plugin_adds_a_cli_command_with_its_own_arguments(site):
    env = {"FACTORY_DISABLE_PLUGINS": "clash"}
    assert "acme-hello" in factory_cli(site, "--help", env=env).stdout
    proc = factory_cli(site, "acme-hello", "world", "--shout", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "HELLO WORLD")
    proc = factory_cli(site, "acme-hello", env=env)  # its own parser reports its own missing argument
    assert proc.returncode == 2 and "usage: factory acme-hello" in proc.stderr and "name" in proc.stderr


def test_a_plugin_data_format_is_recognised_from_the_columns(site, tmp_path):
    rows = tmp_path / "qa.json"
    rows.write_text(json.dumps([{"q": "What is 2+2?", "a": "4"}, {"q": "Capital of France?", "a": "Paris"}]))
    probe = (
        "import sys, json\nfrom factory.config import load_config\nfrom factory.data.worker import load_records\n"
        "cfg = load_config(None, [])\nrecords = load_records(sys.argv[1], cfg, cfg.manager())\n"
        "print(json.dumps(records[0]['messages']))\n"
    )
    environ = {**os.environ, "PYTHONPATH": str(site), "FACTORY_DISABLE_PLUGINS": "clash"}
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(rows)], capture_output=True, text=True, env=environ, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
