"""User-facing errors.

Every failure a user can cause is raised as a :class:`FactoryError` whose message is one
sentence naming the bad value and the fix; the CLI prints it without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FactoryError(Exception):
    """An error caused by input the user controls (config, data, installed plugins)."""


class ConfigError(FactoryError):
    """A run configuration that cannot be accepted."""


class PluginError(FactoryError):
    """A plugin that is missing, unavailable, conflicting or broken."""


class DataError(FactoryError):
    """A data set that cannot be loaded, aligned or tokenized."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def one_of(choices: Iterable[str]) -> str:
    """Render a sorted, comma-separated list of valid choices for an error message."""
    items = sorted(set(choices))
    return ", ".join(items) if items else "(none registered)"
