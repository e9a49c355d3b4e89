"""A page's settings as the YAML file and the command line that ``factory finetune`` accepts unchanged."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import yaml


def to_yaml(config: Mapping[str, Any]) -> str:
    """The settings as a YAML file for ``factory finetune FILE`` (flat keys, plugin options in their sections)."""
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, default_flow_style=False)


def _dotted(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _dotted(value, name + ".")
        else:
            out.append((name, value))
    return out


def _flow(value: Any) -> str:
    if isinstance(value, str):
        # a string the YAML reader would turn into another type (a number, true, null) is quoted
        return value if yaml.safe_load(value) == value else yaml.safe_dump(value, default_style='"').strip()
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...").strip()


def command_line(config: Mapping[str, Any], file: str | None = None) -> str:
    """``factory finetune key=value ...`` for the settings (or ``factory finetune FILE`` when a file is named)."""
    if file:
        return f"factory finetune {shlex.quote(file)}"
    parts = ["factory", "finetune", *(shlex.quote(f"{key}={_flow(value)}") for key, value in _dotted(config))]
    return " ".join(parts)
