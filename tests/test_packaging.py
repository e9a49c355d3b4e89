"""Packaging: every package under core/ is listed (setuptools cannot find them through the core/ -> factory
mapping), and the extras: a missing one is one sentence, and training needs none of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_core_package_is_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "factory" + ("." + ".".join(p.parent.relative_to(ROOT / "core").parts) if p.parent != ROOT / "core" else "")
        for p in (ROOT / "core").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


# -- dependencies by job ------------------------------------------------------------------------


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``modules`` cannot be imported (as if the extra were not installed)."""
    block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("modules", "argv", "says"),
    [
        (
            ["fastapi"],
            ["serve"],
            "factory serve needs the 'serve' extra (fastapi not installed); pip install 'factory-core[serve]'",
        ),
        (
            ["sqlalchemy"],
            ["runs", "list"],
            "factory runs needs the 'store' extra (sqlalchemy not installed); pip install 'factory-core[store]'",
        ),
        (["sqlalchemy"], ["eval", "history"], "factory eval history needs the 'store' extra"),
        (
            ["jieba"],
            ["predict", "model=smollm2-135m-instruct", "dataset=identity"],
            "task bleu-rouge (BLEU and ROUGE) needs the 'metrics' extra (jieba not installed)",
        ),
    ],
)
def test_a_missing_extra_is_one_sentence_naming_the_pip_command(modules, argv, says):
    proc = _without(modules, f"from factory.cli import main; sys.exit(main({argv!r}))")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last and "Traceback" not in proc.stderr


def test_training_without_the_store_or_plots_extras_still_trains(tiny_causal_lm, tmp_path):
    out = tmp_path / "out"
    code = (
        "import factory\n"
        f"factory.finetune(model={str(tiny_causal_lm)!r}, dataset='identity', max_samples=4, max_steps=1, cutoff_len=64,"
        f" precision='fp32', sample_prompt=None, output_dir={str(out)!r})\n"
    )
    proc = _without(["sqlalchemy", "matplotlib"], code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "adapter_config.json").is_file() and not (out / "training_loss.png").exists()
    assert "not recorded in the results database" in proc.stderr and "pip install 'factory-core[store]'" in proc.stderr
    assert "training_loss.png not drawn: pip install 'factory-core[plots]'" in proc.stderr
