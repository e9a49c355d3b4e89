"""The core's own default plugins.

They are registered through the same hooks and the same manager path as third-party plugins
(distribution ``factory-core``); nothing in the core refers to them by name. Their modules only
import light things, so listing plugins never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# plugin name -> module under factory.builtin
BUILTIN_PLUGINS: dict[str, str] = {
    "builtin-methods": "methods",
    "builtin-models": "models",
    "builtin-stages": "stages",
    "builtin-data": "data",
    "builtin-templates": "templates",
    "builtin-engines": "engines",
    "builtin-evaluators": "evaluators",
    "builtin-commands": "commands",
    "builtin-callbacks": "callbacks",
}


def load_builtin(name: str) -> ModuleType:
    return importlib.import_module(f"factory.builtin.{BUILTIN_PLUGINS[name]}")
