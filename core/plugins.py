"""The plugin manager: discovers plugins, validates their hooks, keeps one registry per kind.

Built-in plugins (``factory.builtin``) and third-party ones (entry point group ``factory``)
go through the same path: ``pluggy`` registration, hook validation, then each of the plugin's
``register_<kind>`` hooks is called with a ``register`` callback bound to that plugin, so the
registry always knows which plugin and distribution gave what. A plugin that fails at any
step is recorded with its error and removed; the others keep working.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel

from factory import catalogue, hookspecs
from factory.errors import PluginError, did_you_mean, one_of
from factory.hookspecs import KINDS, LABELS, PROJECT
from factory.registry import Implementation, Requires, check_contract, validate_name

ENTRY_POINT_GROUP = "factory"
DISABLE_ENV = "FACTORY_DISABLE_PLUGINS"
PREFER_ENV = "FACTORY_PREFER"


@dataclass
class PluginRecord:
    """One plugin as the listing shows it."""

    name: str
    distribution: str
    version: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled_by: str | None = None


def _split_env_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _parse_prefer(value: str | None) -> dict[str, str]:
    prefer = {}
    for item in _split_env_list(value):
        key, sep, dist = item.partition("=")
        if not sep or "." not in key:
            raise PluginError(
                f"{PREFER_ENV} entry '{item}' is malformed; write KIND.NAME=DISTRIBUTION, "
                "e.g. adapters.lora=factory-plugin-peft"
            )
        prefer[key.strip()] = dist.strip()
    return prefer


class PluginManager:
    """Registries of implementations per kind, filled by plugins."""

    def __init__(
        self,
        *,
        disable: Iterable[str] = (),
        prefer: Mapping[str, str] | None = None,
        builtins: bool = True,
        entry_points: bool = True,
        use_env: bool = True,
    ) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._section_conflicts: dict[str, str] = {}
        self._impls: dict[str, dict[str, list[Implementation]]] = {kind: {} for kind in KINDS}
        self._disable: dict[str, str] = {name: "config" for name in disable}
        self.prefer: dict[str, str] = dict(prefer or {})
        if use_env:
            for name in _split_env_list(os.environ.get(DISABLE_ENV)):
                self._disable.setdefault(name, DISABLE_ENV)
            for key, dist in _parse_prefer(os.environ.get(PREFER_ENV)).items():
                self.prefer.setdefault(key, dist)
        for key in self.prefer:
            kind = key.partition(".")[0]
            if kind not in KINDS:
                raise PluginError(
                    f"preference '{key}' names an unknown kind '{kind}'{did_you_mean(kind, KINDS)}"
                    f" (kinds: {one_of(KINDS)})"
                )
        if builtins:
            from factory.builtin import BUILTIN_PLUGINS, load_builtin

            version = _core_version()
            for name in BUILTIN_PLUGINS:
                self._add(name, "factory-core", version, lambda name=name: load_builtin(name))
        if entry_points:
            self._load_entry_points()

    # -- discovery -------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "(unknown)"
            version = dist.version if dist is not None else ""
            self._add(ep.name, dist_name, version, ep.load)

    def register_plugin(
        self, plugin: object, name: str, distribution: str = "(local)", version: str = ""
    ) -> PluginRecord:
        """Register an already-imported plugin object (a module or any object with hooks)."""
        return self._add(name, distribution, version, lambda: plugin)

    def _add(self, name: str, distribution: str, version: str, load: Any) -> PluginRecord:
        if name in self.records:
            other = self.records[name]
            record = PluginRecord(name, distribution, version)
            record.error = (
                f"the plugin name '{name}' is already used by {other.distribution}; "
                "rename the entry point in one of the two distributions"
            )
            self.records[f"{name} ({distribution})"] = record
            return record
        record = PluginRecord(name, distribution, version)
        self.records[name] = record
        reason = self._disable.get(name) or self._disable.get(distribution)
        if reason:
            record.disabled_by = reason
            return record
        try:
            plugin = load()
            self._validate(plugin, name)
            self._pm.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            record.error = _describe(exc)
            return record
        added: list[Implementation] = []
        try:
            for hook_name in self._hooks_of(plugin):
                kind = hook_name.removeprefix("register_")
                getattr(plugin, hook_name)(register=self._registrar(kind, record, added))
        except Exception as exc:
            for impl in added:
                self._impls[impl.kind][impl.name].remove(impl)
                if not self._impls[impl.kind][impl.name]:
                    del self._impls[impl.kind][impl.name]
            self._pm.unregister(name=name)
            record.provides.clear()
            record.error = _describe(exc)
        return record

    def _hooks_of(self, plugin: object) -> list[str]:
        return [attr for attr in dir(plugin) if self._pm.parse_hookimpl_opts(plugin, attr) is not None]

    def _validate(self, plugin: object, name: str) -> None:
        """Refuse misspelled hooks and hook arguments, naming the plugin."""
        valid = [f"register_{kind}" for kind in KINDS]
        for attr in self._hooks_of(plugin):
            if attr not in valid:
                raise PluginError(
                    f"plugin '{name}' implements '{attr}', which is not a factory hook"
                    f"{did_you_mean(attr, valid)} (hooks: {one_of(valid)})"
                )
            params = list(inspect.signature(getattr(plugin, attr)).parameters)
            if params != ["register"]:
                raise PluginError(
                    f"plugin '{name}' defines {attr}({', '.join(params)}); "
                    "hooks take exactly one argument named 'register'"
                )

    def _registrar(self, kind: str, record: PluginRecord, added: list[Implementation]) -> Any:
        def register(
            name: str,
            implementation: Any,
            *,
            requires: Requires | Mapping[str, Any] | None = None,
            options: type[BaseModel] | None = None,
            section: str | None = None,
            description: str = "",
        ) -> None:
            validate_name(LABELS[kind], name)
            if isinstance(requires, Mapping):
                requires = Requires(**requires)
            if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise PluginError(
                    f"{LABELS[kind]} '{name}' of plugin '{record.name}' gives options={options!r}; "
                    "options must be a pydantic BaseModel subclass"
                )
            if options is not None:
                _check_defaults(options, LABELS[kind], name, record.name)
            if not isinstance(implementation, str):
                check_contract(kind, name, implementation, record.distribution)
            same = self._impls[kind].get(name, [])
            if any(impl.plugin == record.name for impl in same):
                raise PluginError(f"plugin '{record.name}' registers {LABELS[kind]} '{name}' twice")
            impl = Implementation(
                kind=kind,
                name=name,
                target=implementation,
                plugin=record.name,
                distribution=record.distribution,
                version=record.version,
                requires=requires or Requires(),
                options=options,
                section=(section or name) if options is not None else None,
                description=description,
            )
            self._impls[kind].setdefault(name, []).append(impl)
            record.provides.setdefault(kind, []).append(name)
            added.append(impl)

        return register

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self._impls[self._kind(kind)])

    def implementations(self, kind: str) -> list[Implementation]:
        """Every implementation of ``kind``, one per name (preferences applied)."""
        kind = self._kind(kind)
        out = []
        for name, candidates in sorted(self._impls[kind].items()):
            chosen = self._choose(kind, name, candidates, strict=False)
            if chosen is not None:
                out.append(chosen)
        return out

    def get(self, kind: str, name: str) -> Implementation:
        """The implementation registered as ``name``; a clear PluginError when there is none."""
        kind = self._kind(kind)
        candidates = self._impls[kind].get(name)
        if not candidates:
            raise PluginError(self._missing(kind, name))
        chosen = self._choose(kind, name, candidates, strict=True)
        assert chosen is not None
        return chosen

    def require(self, kind: str, name: str) -> Implementation:
        """Like :meth:`get`, but also refuse an implementation that cannot run here."""
        impl = self.get(kind, name)
        reason = impl.unavailable_reason()
        if reason:
            raise PluginError(f"{LABELS[impl.kind]} '{name}' from {impl.distribution} cannot run here: it {reason}")
        return impl

    def load(self, kind: str, name: str) -> Any:
        """The ready-to-use implementation object, after checking it can run here."""
        return self.require(kind, name).load()

    def _kind(self, kind: str) -> str:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind '{kind}'{did_you_mean(kind, KINDS)} (kinds: {one_of(KINDS)})")
        return kind

    def _choose(self, kind: str, name: str, candidates: list[Implementation], *, strict: bool) -> Implementation | None:
        if len(candidates) == 1:
            return candidates[0]
        wanted = self.prefer.get(f"{kind}.{name}")
        for impl in candidates:
            if wanted in (impl.distribution, impl.plugin):
                return impl
        if not strict:
            return None
        both = " and ".join(f"{impl.distribution} (plugin '{impl.plugin}')" for impl in candidates)
        raise PluginError(
            f"{LABELS[kind]} '{name}' is registered by both {both}; choose one with "
            f"plugins.prefer: {{{kind}.{name}: {candidates[0].distribution}}} in the config or "
            f"{PREFER_ENV}={kind}.{name}={candidates[0].distribution}, or disable one plugin"
        )

    def conflicts(self) -> dict[tuple[str, str], list[Implementation]]:
        """Names registered by more than one plugin and not settled by a preference."""
        return {
            (kind, name): candidates
            for kind, table in self._impls.items()
            for name, candidates in table.items()
            if len(candidates) > 1 and self._choose(kind, name, candidates, strict=False) is None
        }

    def _missing(self, kind: str, name: str) -> str:
        label = LABELS[kind]
        dist = catalogue.provider_of(kind, name)
        if dist is not None:
            blocked = [r for r in self.records.values() if r.distribution == dist]
            if blocked and blocked[0].error:
                return f"{label} '{name}' comes from {dist}, which failed to load: {blocked[0].error}"
            if blocked and blocked[0].disabled_by:
                return (
                    f"{label} '{name}' comes from {dist}, which is disabled by {blocked[0].disabled_by}; re-enable it"
                )
            return f"{label} '{name}' comes from {dist}, which is not installed; pip install {dist}"
        names = list(self._impls[kind])
        return f"unknown {label} '{name}'{did_you_mean(name, names)} (registered: {one_of(names)})"

    # -- config sections -------------------------------------------------------------------

    def sections(self) -> dict[str, tuple[type[BaseModel], list[Implementation]]]:
        """Config section name -> (options model, implementations that read it).

        A section two plugins claim with different options is left out (and named by
        :meth:`section_conflicts`), so only a config that uses it fails.
        """
        out: dict[str, tuple[type[BaseModel], list[Implementation]]] = {}
        for kind in KINDS:
            for impl in self.implementations(kind):
                if impl.options is None or impl.section is None:
                    continue
                model, users = out.setdefault(impl.section, (impl.options, []))
                if model is not impl.options and impl.section not in self._section_conflicts:
                    self._section_conflicts[impl.section] = (
                        f"config section '{impl.section}' is claimed with different options by "
                        f"{users[0].distribution} and {impl.distribution}; disable one of them"
                    )
                users.append(impl)
        return {name: entry for name, entry in out.items() if name not in self._section_conflicts}

    def section_conflicts(self) -> dict[str, str]:
        """Sections claimed by two plugins with different options -> the sentence that says so."""
        self.sections()
        return dict(self._section_conflicts)

    # -- listing ---------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per plugin: name, distribution, version, provides, status, reason."""
        conflicts = self.conflicts()
        rows = []
        for record in self.records.values():
            status, reason = self._status(record, conflicts)
            impls = [
                impl
                for kind, names in record.provides.items()
                for name in names
                for impl in self._impls[kind].get(name, [])
                if impl.plugin == record.name
            ]
            rows.append(
                {
                    "name": record.name,
                    "distribution": record.distribution,
                    "version": record.version,
                    "provides": {kind: sorted(names) for kind, names in sorted(record.provides.items())},
                    "status": status,
                    "reason": reason,
                    "implementations": [
                        {
                            "kind": impl.kind,
                            "name": impl.name,
                            "requires": impl.requires.describe(),
                            "available": impl.unavailable_reason() is None,
                            "reason": impl.unavailable_reason(),
                            "section": impl.section,
                            "description": impl.description,
                        }
                        for impl in impls
                    ],
                }
            )
        return rows

    def _status(
        self, record: PluginRecord, conflicts: dict[tuple[str, str], list[Implementation]]
    ) -> tuple[str, str | None]:
        if record.error:
            return f"failed to load: {record.error}", record.error
        if record.disabled_by:
            return "disabled", f"disabled by {record.disabled_by}"
        clashes = [
            f"{LABELS[kind]} '{name}' is also registered by "
            + ", ".join(i.distribution for i in impls if i.plugin != record.name)
            for (kind, name), impls in conflicts.items()
            if any(i.plugin == record.name for i in impls)
        ]
        if clashes:
            reason = "; ".join(clashes)
            return f"conflict: {reason}", reason
        reasons = {}
        total = 0
        for kind, names in record.provides.items():
            for name in names:
                for impl in self._impls[kind].get(name, []):
                    if impl.plugin == record.name:
                        total += 1
                        why = impl.unavailable_reason()
                        if why:
                            reasons[name] = why
        if total and len(reasons) == total:
            why = (
                next(iter(set(reasons.values())))
                if len(set(reasons.values())) == 1
                else "; ".join(f"{name} {why}" for name, why in reasons.items())
            )
            return f"unavailable: {why}", why
        if reasons:
            return "ok", "partly unavailable: " + "; ".join(f"{name} {why}" for name, why in reasons.items())
        return "ok", None


def _check_defaults(options: type[BaseModel], label: str, name: str, plugin: str) -> None:
    """An options model must validate with no settings: every config load builds every section."""
    from pydantic import ValidationError

    try:
        options.model_validate({})
    except ValidationError as exc:
        field = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "(the model)"
        raise PluginError(
            f"{label} '{name}' of plugin '{plugin}' has options that do not validate with no settings "
            f"({field}: {exc.errors()[0]['msg']}); give every option a default"
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PluginError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def _core_version() -> str:
    try:
        return importlib.metadata.version("factory-core")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_MANAGERS: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], PluginManager] = {}


def get_manager(disable: Iterable[str] = (), prefer: Mapping[str, str] | None = None) -> PluginManager:
    """The process-wide manager for these settings (plugins are discovered once)."""
    key = (tuple(sorted(disable)), tuple(sorted((prefer or {}).items())))
    env = (os.environ.get(DISABLE_ENV, ""), os.environ.get(PREFER_ENV, ""))
    full_key = (key[0] + env, key[1])
    if full_key not in _MANAGERS:
        _MANAGERS[full_key] = PluginManager(disable=disable, prefer=prefer)
    return _MANAGERS[full_key]
