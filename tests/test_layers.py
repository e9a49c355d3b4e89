"""The rooms' layering: the service sits above inference, evaluation and training, which never import
it; the store sits below them all and imports none of them (type hints aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"


def runtime_imports(path: Path) -> set[str]:
    """Every module a file imports when it runs, at any depth (``if TYPE_CHECKING:`` blocks left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("infer", ("factory.service",)),
        ("eval", ("factory.service",)),
        ("train", ("factory.service",)),
        ("model", ("factory.service",)),
        ("data", ("factory.service",)),
        ("store", ("factory.service", "factory.eval", "factory.train", "factory.infer")),
    ],
)
def test_rooms_import_only_downwards(room, forbidden):
    wrong = {
        f"{path.relative_to(CORE)}: {module}"
        for path in (CORE / room).rglob("*.py")
        for module in runtime_imports(path)
        if module.startswith(forbidden)
    }
    assert not wrong, sorted(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\ndef f():\n    from factory.service import x\n"
    )
    assert runtime_imports(sample) == {"typing", "factory.service"}
