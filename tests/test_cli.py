"""The command line: help, version, plugin listing without torch, one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import factory

CLI = [sys.executable, "-m", "factory.cli"]


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False, **kwargs)


def test_help_and_version():
    proc = run("--help")
    assert proc.returncode == 0 and "finetune" in proc.stdout and "plugins" in proc.stdout
    proc = run("--version")
    assert proc.stdout.strip() == f"factory {factory.__version__}"


def test_listing_is_json_and_names_every_builtin():
    from factory.builtin import BUILTIN_PLUGINS

    proc = run("plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    names = {row["name"] for row in rows}
    assert set(BUILTIN_PLUGINS) <= names
    for row in rows:
        assert set(row) == {"name", "distribution", "version", "provides", "status", "reason"}


def test_listing_and_help_do_not_import_torch():
    probe = (
        "import sys\nfrom factory.cli import main\n"
        "main(['plugins', 'list', '--json'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout


def test_listing_answers_quickly():
    start = time.perf_counter()
    assert run("plugins", "list").returncode == 0
    # Generous bound for a loaded CI machine; the real figure is ~0.4 s.
    assert time.perf_counter() - start < 5


def test_plugins_show():
    proc = run("plugins", "show", "builtin-methods", "--json")
    row = json.loads(proc.stdout)
    assert row["distribution"] == "factory-core"
    assert {impl["name"] for impl in row["implementations"]} >= {"full", "freeze", "adamw"}
    proc = run("plugins", "show", "builtin-methds")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: no plugin named 'builtin-methds'; did you mean 'builtin-methods'?; see factory plugins list"
    )


def test_finetune_with_unknown_key_is_one_sentence(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: smollm2-135m-instruct\nlerning_rate: 1.0e-4\n")
    proc = run("finetune", str(tmp_path / "bad.yaml"))
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: unknown config key 'lerning_rate'; did you mean 'learning_rate'?"
    assert "Traceback" not in proc.stderr


NOISE = (
    "Failed to load",
    "register_constant()",
    "GPT-QModel",
    "Python GIL is enabled",
    "FutureWarning",
    "gemm_4bit_forward",
    "INFO:",
)


def test_a_run_is_quiet_by_default_and_verbose_on_request(tiny_causal_lm, demo_dir, tmp_path):
    """A LoRA run imports peft, which imports bitsandbytes, torchao and GPT-QModel: none of their chatter shows."""
    args = [
        "finetune",
        f"model={tiny_causal_lm}",
        "dataset=alpaca_en_demo",
        f"dataset_dir={demo_dir}",
        "max_samples=8",
        "max_steps=1",
        "cutoff_len=64",
        "sample_prompt=null",
        "precision=fp32",
    ]
    quiet = subprocess.run(
        [sys.executable, "-m", "factory.cli", *args, f"output_dir={tmp_path / 'q'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert [marker for marker in NOISE if marker in quiet.stderr + quiet.stdout] == []
    assert "factory: outputs written to" in quiet.stdout
    loud = subprocess.run(
        [sys.executable, "-m", "factory.cli", "-v", *args, f"output_dir={tmp_path / 'v'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert loud.returncode == 0 and [marker for marker in NOISE if marker in loud.stderr + loud.stdout]
