"""The config reference documents every core key."""

from __future__ import annotations

from pathlib import Path

from factory.config import RunConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_core_key_is_documented():
    text = DOC.read_text()
    missing = [name for name in RunConfig.model_fields if f"`{name}`" not in text and f"`{name}." not in text]
    assert not missing, f"document these keys in docs/config.md: {missing}"
