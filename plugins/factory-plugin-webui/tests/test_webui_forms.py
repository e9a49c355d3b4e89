"""The page's forms, settings files and command, without a browser (the browser tests are in test_webui_browser.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factory_plugin_webui.command import check_exposure, parse_address
from factory_plugin_webui.forms import PAGE_KEYS, TRAIN_GROUPS, check, fields, to_config
from factory_plugin_webui.settings import command_line, to_yaml

from factory.plugin_api import CONFIG_GROUPS, RunConfig, load_config

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def probe_site(tmp_path_factory) -> Path:
    """The third-party probe plugin, pip-installed into a folder of its own (kept off the test environment)."""
    target = tmp_path_factory.mktemp("probe-site")
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
            str(FIXTURES / "probe"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def test_webui_is_a_command_added_through_the_commands_hook():
    from factory.plugin_api import PluginManager

    impl = PluginManager().get("commands", "webui")
    assert impl.distribution == "factory-plugin-webui"
    proc = run_cli("--help")
    assert "webui" in proc.stdout


def test_every_core_key_and_every_plugin_option_is_a_field():
    from factory.plugin_api import PluginManager

    manager = PluginManager()
    keys = {spec.key for spec in fields(manager)}
    # the oracle: the config model's own fields and each plugin section's options model
    core = {k for g in TRAIN_GROUPS for k in CONFIG_GROUPS[g]} - PAGE_KEYS
    plugin = {
        f"{name}.{option}" for name, (options, _) in manager.sections().items() for option in options.model_fields
    }
    assert keys == core | plugin
    assert "lora.rank" in keys  # the peft plugin's options, with no UI code in it


def test_field_kinds_come_from_the_schema():
    from factory.plugin_api import PluginManager

    specs = {spec.key: spec for spec in fields(PluginManager())}
    assert specs["gradient_checkpointing"].kind == "bool"
    assert specs["packing"].kind == "tristate"  # bool | None: true, false, or the default
    assert specs["precision"].kind == "choice" and [v for _, v in specs["precision"].choices] == [
        "auto",
        "bf16",
        "fp16",
        "fp32",
    ]
    assert specs["learning_rate"].kind == "number" and specs["learning_rate"].default == RunConfig().learning_rate
    assert specs["method"].kind == "choice" and "lora" in [v for _, v in specs["method"].choices]
    assert specs["patches"].kind == "multi"
    quant = dict((v, label) for label, v in specs["quantization"].choices)
    assert "" in quant  # none, for an optional choice
    # an implementation that cannot run here is listed with its reason
    reasons = {i.name: i.unavailable_reason() for i in PluginManager().implementations("optimizers")}
    assert any(reasons.values())  # on this CPU machine, galore-8bit needs a GPU
    for label, name in specs["optimizer"].choices:
        assert label == (f"{name} (unavailable: {reasons[name]})" if reasons[name] else name)


def test_bad_learning_rate_gets_the_cli_sentence_and_names_the_field():
    from factory.plugin_api import PluginManager

    specs = fields(PluginManager())
    values = [("abc" if spec.key == "learning_rate" else spec.shown(spec.default)) for spec in specs]
    result = check(to_config(specs, values))
    cli = run_cli("finetune", "learning_rate=abc")
    assert cli.returncode == 2
    assert result.error == cli.stderr.strip().removeprefix("error: ")
    assert result.key == "learning_rate"


def test_unchanged_form_is_the_default_config():
    from factory.plugin_api import PluginManager

    specs = fields(PluginManager())
    values = [spec.shown(spec.default) for spec in specs]
    assert to_config(specs, values) == {}


def test_saved_settings_are_what_factory_finetune_reads(tmp_path):
    from factory.plugin_api import PluginManager

    specs = fields(PluginManager())
    changed = {
        "learning_rate": "2e-4",
        "lora.rank": "4",
        "max_steps": "3",
        "dataset": "[identity, alpaca_en_demo]",
        "sample_prompt": "",
        "gradient_checkpointing": True,
        "template": "chatml",
        "output_dir": str(tmp_path / "o"),
    }
    values = [changed.get(spec.key, spec.shown(spec.default)) for spec in specs]
    data = to_config(specs, values)
    assert data["lora"] == {"rank": 4} and data["learning_rate"] == 2e-4 and data["sample_prompt"] is None
    path = tmp_path / "settings.yaml"
    path.write_text(to_yaml(data), encoding="utf-8")
    expected = load_config(data).to_dict()
    # the loader `factory finetune FILE` uses, and the command line the page shows, give the same config
    from factory.plugin_api import parse_overrides

    assert load_config(str(path)).to_dict() == expected
    line = command_line(data)
    assert line.startswith("factory finetune ")
    import shlex

    assert load_config(None, shlex.split(line)[2:]).to_dict() == expected
    assert command_line(data, str(path)) == f"factory finetune {path}"
    assert parse_overrides(["lora.rank=4"]) == {"lora": {"rank": 4}}


def test_a_third_party_plugins_options_are_fields_and_reach_the_config(probe_site):
    code = (
        "import json\n"
        "from factory.plugin_api import PluginManager, load_config\n"
        "from factory_plugin_webui.forms import fields, to_config\n"
        "specs = fields(PluginManager())\n"
        "probe = {s.key: (s.kind, s.default, s.plugin, [v for _, v in s.choices]) for s in specs if s.key.startswith('probe.')}\n"
        "values = [{'probe.greeting': 'hi there', 'probe.repeats': '3', 'probe.mode': 'loud'}.get(s.key, s.shown(s.default)) for s in specs]\n"
        "cfg = load_config(to_config(specs, values))\n"
        "print(json.dumps({'fields': probe, 'options': cfg.options('probe').model_dump()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(probe_site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    out = json.loads(proc.stdout)
    assert out["fields"] == {
        "probe.greeting": ["text", "hello", "probe-factory-plugin", []],
        "probe.repeats": ["number", 1, "probe-factory-plugin", []],
        "probe.mode": ["choice", "quiet", "probe-factory-plugin", ["quiet", "loud"]],
    }
    assert out["options"] == {"greeting": "hi there", "repeats": 3, "mode": "loud"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_nothing(host):
    check_exposure(host, False, None)


def test_network_host_needs_the_flag_and_a_key():
    proc = run_cli("webui", "host=0.0.0.0", env={"FACTORY_WEBUI_KEY": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: webui host '0.0.0.0' is reachable from the network; add --share-on-network and set FACTORY_WEBUI_KEY "
        "to a secret key to allow it, or use host=127.0.0.1"
    ]
    proc = run_cli("webui", "host=0.0.0.0", "--share-on-network", env={"FACTORY_WEBUI_KEY": ""})
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: webui host '0.0.0.0' needs an auth key on the network; set FACTORY_WEBUI_KEY to a secret key"
    )


def test_address_parsing():
    assert parse_address(["port=9000", "model=x"]) == ("127.0.0.1", 9000, ["model=x"])
    proc = run_cli("webui", "port=http")
    assert proc.returncode == 2 and "webui port 'http'" in proc.stderr
