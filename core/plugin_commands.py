"""``factory plugins list|show|new``: the built-in command that inspects installed plugins and starts new ones.

It is registered through the same ``register_commands`` hook as any plugin's command
(:mod:`factory.builtin.commands`), so the commands hook has the core as its first user.
"""

from __future__ import annotations

import argparse
import json

from factory.contracts import CONTRACTS
from factory.errors import PluginError, did_you_mean
from factory.plugins import get_manager


class PluginsCommand:
    help = "list and inspect installed plugins, or scaffold a new one"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="SUBCOMMAND", required=True)
        q = sub.add_parser("list", help="every plugin, what it registers and whether it can run here")
        q.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
        q = sub.add_parser("show", help="one plugin's implementations, requirements and options")
        q.add_argument("name")
        q.add_argument("--json", action="store_true")
        q = sub.add_parser("new", help="write a plugin distribution (pyproject, package, README, test) to start from")
        q.add_argument("name", help="what users will write in configs, e.g. acme (distribution factory-plugin-acme)")
        q.add_argument("--kind", required=True, help="the kind it registers: " + ", ".join(CONTRACTS))
        q.add_argument("--dir", default=".", help="folder to create factory-plugin-NAME in (default: here)")

    def run(self, args: argparse.Namespace) -> int:
        if args.action == "new":
            return new_plugin(args.name, args.kind, args.dir)
        return list_plugins(args.json) if args.action == "list" else show_plugin(args.name, args.json)


def new_plugin(name: str, kind: str, directory: str) -> int:
    from factory.scaffold import scaffold

    root = scaffold(name, kind, directory)
    print(f"factory: wrote {root}; pip install -e {root} and it shows in factory plugins list")
    return 0


def list_plugins(as_json: bool) -> int:
    rows = get_manager().listing()
    if as_json:
        print(
            json.dumps(
                [
                    {k: row[k] for k in ("name", "distribution", "version", "provides", "status", "reason")}
                    for row in rows
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="factory plugins", show_lines=False)
    for col in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(col, overflow="fold")
    for row in rows:
        provides = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in row["provides"].items()) or "-"
        status = row["status"]
        style = "green" if status == "ok" else ("yellow" if status.startswith(("unavailable", "disabled")) else "red")
        table.add_row(row["name"], row["distribution"], row["version"], provides, f"[{style}]{status}[/{style}]")
    Console().print(table)
    return 0


def show_plugin(name: str, as_json: bool) -> int:
    rows = {row["name"]: row for row in get_manager().listing()}
    row = rows.get(name) or next((r for r in rows.values() if r["distribution"] == name), None)
    if row is None:
        raise PluginError(f"no plugin named '{name}'{did_you_mean(name, rows)}; see factory plugins list")
    if as_json:
        print(json.dumps(row, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{row['name']}[/bold]  {row['distribution']} {row['version']}")
    console.print(f"status: {row['status']}")
    table = Table(show_header=True)
    for col in ("kind", "name", "requires", "available", "config section", "description"):
        table.add_column(col, overflow="fold")
    for impl in row["implementations"]:
        available = "yes" if impl["available"] else f"no: {impl['reason']}"
        table.add_row(
            impl["kind"], impl["name"], impl["requires"], available, impl["section"] or "-", impl["description"]
        )
    console.print(table)
    return 0


PLUGINS = PluginsCommand()
