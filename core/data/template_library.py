"""Templates as YAML files: reading a file or folder of them, lazily, and the packaged library.

Reading the files only lists names, aliases and descriptions, which keeps plugin registration
fast; a template is built and validated the first time a run uses it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from factory.data.template_format import InvalidTemplate, Template
from factory.errors import PluginError, did_you_mean, one_of

Source = str | os.PathLike | Traversable
NAME = re.compile(r"[a-z0-9][a-z0-9_\-]*")


def _yaml_files(source: Source) -> list[Traversable]:
    root = Path(source) if isinstance(source, str | os.PathLike) else source
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PluginError(f"template source {root} is neither a YAML file nor a folder; check the path")
    return sorted((f for f in root.iterdir() if f.name.endswith((".yaml", ".yml"))), key=lambda f: f.name)


def _read_yaml(file: Traversable) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PluginError(f"{file} is not valid YAML{line} ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PluginError(f"{file} must map template names to their fields, but holds a {type(data).__name__}")
    return data


class TemplateLibrary:
    """The templates of a YAML file or a folder of them, each built (and validated) on first use.

    Templates are attributes (``library.chatml``), so a plugin registers them as lazily
    imported ``"module:LIBRARY.name"`` strings with :meth:`register_all`. A template's
    ``aliases`` are further names for it (LLaMA-Factory's names for the packaged ones).
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._entries: dict[str, tuple[str, dict]] | None = None
        self._aliases: dict[str, str] = {}
        self._built: dict[str, Template] = {}

    def entries(self) -> dict[str, tuple[str, dict]]:
        """Template name -> (file it is defined in, its raw fields)."""
        if self._entries is None:
            entries: dict[str, tuple[str, dict]] = {}
            for file in _yaml_files(self._source):
                for name, raw in _read_yaml(file).items():
                    if not isinstance(name, str) or not NAME.fullmatch(name):
                        raise PluginError(
                            f"{file} defines a template named {name!r}; use lower-case letters, digits, '-' or '_'"
                        )
                    if not isinstance(raw, dict):
                        raise PluginError(f"template '{name}' in {file} must be a mapping of fields, not {raw!r}")
                    if name in entries:
                        raise PluginError(
                            f"template '{name}' is defined in both {entries[name][0]} and {file}; rename one"
                        )
                    entries[name] = (str(file), raw)
            self._aliases = self._read_aliases(entries)
            self._entries = entries
        return self._entries

    @staticmethod
    def _read_aliases(entries: dict[str, tuple[str, dict]]) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for name, (file, raw) in entries.items():
            for alias in raw.get("aliases") or ():
                if not isinstance(alias, str) or not NAME.fullmatch(alias):
                    raise PluginError(
                        f"template '{name}' in {file} has the alias {alias!r}; use lower-case letters, "
                        "digits, '-' or '_'"
                    )
                owner = aliases.get(alias) or (alias if alias in entries else None)
                if owner:
                    raise PluginError(
                        f"'{alias}' names both template '{owner}' and an alias of '{name}' ({file}); remove one"
                    )
                aliases[alias] = name
        return aliases

    def names(self) -> list[str]:
        return sorted(self.entries())

    def aliases(self) -> dict[str, str]:
        """Alias -> the template it names."""
        self.entries()
        return dict(self._aliases)

    def get(self, name: str) -> Template:
        """The template ``name`` (or the one an alias names), validated; a PluginError naming the file and key."""
        entries = self.entries()
        name = self._aliases.get(name, name)
        if name not in self._built:
            if name not in entries:
                raise PluginError(
                    f"unknown template '{name}'{did_you_mean(name, entries)} (defined: {one_of(entries)})"
                )
            where, raw = entries[name]
            try:
                self._built[name] = Template(**{**raw, "name": name})
            except InvalidTemplate as exc:
                raise PluginError(f"template '{name}' in {where} is invalid: {exc.reason}") from None
        return self._built[name]

    def __getattr__(self, name: str) -> Template:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except PluginError as exc:
            if name in self.entries() or name in self._aliases:
                raise
            raise AttributeError(str(exc)) from None

    def register_all(self, register: Callable[..., Any], attribute: str) -> None:
        """Register every template and alias with ``register``; ``attribute`` is where this library lives,
        as ``"module:NAME"``, so each template is imported and built only when a run uses it."""
        for name, (_, raw) in self.entries().items():
            register(name, f"{attribute}.{name}", description=str(raw.get("description", "")))
        for alias, name in self._aliases.items():
            register(alias, f"{attribute}.{alias}", description=f"alias of {name}")


PACKAGED = TemplateLibrary(files("factory.chat_templates"))
"""The templates shipped with factory (``templates/*.yaml``, package data of ``factory.chat_templates``)."""
