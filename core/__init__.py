"""factory: fine-tune, serve and evaluate large language models, with every method a plugin.

The top-level names are imported lazily so that ``import factory`` (and the CLI's listing
commands) never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError, DataError, FactoryError, PluginError
from factory.hookspecs import hookimpl
from factory.registry import Requires

try:
    from importlib.metadata import version as _version

    __version__ = _version("factory-core")
except Exception:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "finetune": "factory.api",
    "evaluate": "factory.eval",
    "plugins": "factory.api",
    "load_config": "factory.config",
    "RunConfig": "factory.config",
    "PluginManager": "factory.plugins",
    "get_manager": "factory.plugins",
}

__all__ = [
    "ConfigError",
    "DataError",
    "FactoryError",
    "PluginError",
    "Requires",
    "__version__",
    "hookimpl",
    "finetune",
    "evaluate",
    "plugins",
    "load_config",
    "RunConfig",
    "PluginManager",
    "get_manager",
]

if TYPE_CHECKING:
    from factory.api import finetune, plugins
    from factory.config import RunConfig, load_config
    from factory.eval import evaluate
    from factory.plugins import PluginManager, get_manager


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'factory' has no attribute '{name}'")
