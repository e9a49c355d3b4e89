"""A model's ``config.json``, read without loading the model.

Plugins decide things before the loader runs (is this checkpoint already quantized? which
model type will a kernel patch meet?), so they read the file where the loader will find it:
an alias's converted folder, a local folder, or a hub id already in the local cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factory.config import RunConfig


def checkpoint_config(cfg: RunConfig) -> dict[str, Any]:
    """The parsed ``config.json`` of ``cfg.model`` (empty when there is none to read, e.g. a GGUF file)."""
    from factory.model.aliases import ALIASES, resolve_alias

    source = cfg.model
    if source in ALIASES:
        config_file: Any = resolve_alias(source) / "config.json"
    elif Path(source).is_dir():
        config_file = Path(source) / "config.json"
    elif source.count("/") == 1 and not Path(source).suffix:
        from huggingface_hub import try_to_load_from_cache

        config_file = try_to_load_from_cache(source, "config.json")
    else:
        return {}
    if not isinstance(config_file, (str, Path)) or not Path(config_file).is_file():
        return {}
    return json.loads(Path(config_file).read_text(encoding="utf-8"))
