"""``factory webui [host=127.0.0.1] [port=7860] [KEY=VALUE ...]``: serve the page.

Any other ``KEY=VALUE`` (or a YAML file first) sets the page's starting values and its database
(``results_db``), e.g. ``factory webui model=/models/qwen dataset_dir=data``. Binding to anything
but loopback needs ``--share-on-network`` and a key in ``FACTORY_WEBUI_KEY``: the page starts
training jobs and reads local files, so it is never open to a network by accident.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from factory.plugin_api import ConfigError, load_config

KEY_ENV = "FACTORY_WEBUI_KEY"
DEFAULT_PORT = 7860


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(items: list[str]) -> tuple[str, int, list[str]]:
    """(host, port, the other overrides) from the command's ``key=value`` items."""
    host, port, rest = "127.0.0.1", DEFAULT_PORT, []
    for item in items:
        key, _, value = item.partition("=")
        if key == "host":
            host = value.strip()
        elif key == "port":
            if not value.strip().isdigit() or not 0 < int(value) < 65536:
                raise ConfigError(
                    f"webui port '{value}' is not a port number; give one between 1 and 65535, e.g. port=7860"
                )
            port = int(value)
        else:
            rest.append(item)
    return host, port, rest


def check_exposure(host: str, share_on_network: bool, key: str | None) -> None:
    """Refuse a non-loopback address without the explicit flag and an auth key, in one sentence."""
    if is_loopback(host):
        return
    if not share_on_network:
        raise ConfigError(
            f"webui host '{host}' is reachable from the network; add --share-on-network and set {KEY_ENV} "
            "to a secret key to allow it, or use host=127.0.0.1"
        )
    if not key:
        raise ConfigError(f"webui host '{host}' needs an auth key on the network; set {KEY_ENV} to a secret key")


class WebUICommand:
    help = "fine-tune, chat, evaluate and export from a web page"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "args",
            nargs="*",
            metavar="[CONFIG] KEY=VALUE",
            help="host=127.0.0.1 port=7860, and any config key as the page's starting value",
        )
        parser.add_argument(
            "--share-on-network", action="store_true", help=f"allow a non-loopback host (needs {KEY_ENV})"
        )

    def run(self, args: argparse.Namespace) -> int:
        items = list(args.args)
        config = items.pop(0) if items and "=" not in items[0] else None
        host, port, overrides = parse_address(items)
        key = os.environ.get(KEY_ENV) or None
        check_exposure(host, args.share_on_network, key)
        base = load_config(config, overrides)
        from factory_plugin_webui.app import serve

        serve(base, host=host, port=port, key=key)
        return 0


WEBUI = WebUICommand()
