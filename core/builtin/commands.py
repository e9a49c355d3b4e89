"""Built-in CLI commands registered through the commands hook, as any plugin's are."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_commands(register):
    register("plugins", "factory.plugin_commands:PLUGINS", description="list and inspect installed plugins")
