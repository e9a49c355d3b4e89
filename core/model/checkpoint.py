"""A model's ``config.json``, read without loading the model.

Plugins decide things before the loader runs (is this checkpoint already quantized? which
model type will a kernel patch meet?), so they read the file where the loader will find it:
an alias's converted folder, a local folder, or a hub id's snapshot (downloaded now if missing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError

# owner/name as the hub spells repository ids (no leading '/', '.' or '-', nothing beyond one '/').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is spelled like a hub repository id (``owner/name``), not a path."""
    return _HUB_ID.match(source) is not None and not Path(source).exists()


def checkpoint_config(cfg: RunConfig) -> dict[str, Any]:
    """The parsed ``config.json`` of ``cfg.model`` (empty when there is none to read, e.g. a GGUF file)."""
    from factory.model.aliases import ALIASES, resolve_alias

    source = cfg.model
    if source in ALIASES:
        config_file: Any = resolve_alias(source) / "config.json"
    elif Path(source).is_dir():
        config_file = Path(source) / "config.json"
    elif is_hub_id(source):
        from factory.model.hub import fetch_model

        config_file = fetch_model(source, cfg.revision) / "config.json"
    else:
        return {}
    if not isinstance(config_file, (str, Path)) or not Path(config_file).is_file():
        return {}
    try:
        return json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"model config '{config_file}' is not valid JSON ({exc}); fix or replace the model folder"
        ) from None
