"""Form fields generated from the run config's JSON schema, and the page's values turned back into a config.

Nothing here names a config key by hand except the few whose choices come from the plugin
registries (stage, method, ...): every core key and every installed plugin's option section
(:func:`factory.plugin_api.config_schema`) becomes a field, so a third-party plugin's options
appear in the page with no UI code. A value is read the way the CLI reads ``key=value`` (YAML),
and checked by the same :func:`load_config`, so a bad value gets the CLI's sentence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from factory.plugin_api import ConfigError, config_schema, load_config

# Config keys whose choices are the names a plugin kind registers (kind, several values allowed).
REGISTRY_CHOICES: dict[str, tuple[str, bool]] = {
    "stage": ("stages", False),
    "method": ("adapters", False),
    "optimizer": ("optimizers", False),
    "quantization": ("quantizers", False),
    "patches": ("patches", True),
    "callbacks": ("callbacks", True),
    "template": ("templates", False),
    "loader": ("loaders", False),
    "engine": ("engines", False),
}
# The groups of core keys the Train tab shows (serve and eval keys belong to other tabs).
TRAIN_GROUPS = ("model", "data", "train", "output")
# Core keys that are the page's own business, never a run field of the Train tab.
PAGE_KEYS = frozenset({"results_db", "results_db_timeout"})

_KEY_IN_MESSAGE = re.compile(r"config (?:key|section) '([^']+)'")


@dataclass(frozen=True)
class FieldSpec:
    """One form field: a core key (``learning_rate``) or a plugin option (``lora.rank``)."""

    key: str
    group: str  # the core group (model, data, train, ...) or the plugin section's name
    kind: str  # bool, tristate (bool or None), choice, multi, text, number, yaml
    default: Any
    description: str = ""
    choices: tuple[tuple[str, str], ...] = ()  # (label, value); unavailable implementations say why
    optional: bool = False
    plugin: str | None = None  # the distribution of a plugin section
    used_by: tuple[str, ...] = ()  # "method lora", ... for a plugin section

    @property
    def section(self) -> str | None:
        """The plugin section of a plugin option, else None."""
        return self.key.split(".", 1)[0] if self.plugin else None

    def shown(self, value: Any) -> Any:
        """A config value as the field shows it."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "tristate":
            return "" if value is None else str(bool(value)).lower()
        if self.kind == "multi":
            return [value] if isinstance(value, str) else list(value or [])
        if value is None:
            return ""  # the empty choice is "none"
        if self.kind == "yaml" and not isinstance(value, str):
            return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
        return value if self.kind == "choice" else str(value)

    def parse(self, shown: Any) -> Any:
        """What the field holds, as a config value: read as YAML, like ``key=value`` on the command line."""
        if self.kind in ("bool", "multi"):
            return bool(shown) if self.kind == "bool" else list(shown or [])
        if shown is None or (isinstance(shown, str) and not shown.strip()):
            return None if self.optional else self.default
        if self.kind == "tristate":
            return {"true": True, "false": False}.get(str(shown).lower(), shown)
        if self.kind in ("text", "choice"):
            return shown if not isinstance(shown, str) else shown.strip()
        if self.kind == "number" and isinstance(shown, str):
            for number in (int, float):  # YAML 1.1 reads 1e-4 as a string; the config would too, but say 1e-04 == 1e-4
                try:
                    return number(shown.strip())
                except ValueError:
                    pass
            return shown.strip()  # the config's validation names the key and the value
        try:
            return yaml.safe_load(shown)
        except yaml.YAMLError:
            return shown  # the config's validation names the key and the value


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    return defs.get(ref.rsplit("/", 1)[-1], {}) if isinstance(ref, str) else node


def _kind(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[str, bool, tuple[str, ...]]:
    """(kind, None allowed, enum values) of one schema property."""
    variants = [_resolve(v, defs) for v in prop.get("anyOf", [prop])]
    optional = any(v.get("type") == "null" for v in variants)
    real = [v for v in variants if v.get("type") != "null"]
    enums = tuple(str(e) for v in real for e in v.get("enum", ()) if e is not None)
    types = {v.get("type") for v in real}
    if enums and len(real) == 1:
        return "choice", optional, enums
    if types == {"boolean"}:
        return ("tristate" if optional else "bool"), optional, ()
    if types <= {"integer", "number"} and types:
        return "number", optional, ()
    if types == {"string"}:
        return "text", optional, ()
    return "yaml", optional, ()


def _registry_choices(manager: Any, kind: str) -> tuple[tuple[str, str], ...]:
    out = []
    for impl in sorted(manager.implementations(kind), key=lambda i: i.name):
        reason = impl.unavailable_reason()
        out.append((f"{impl.name} (unavailable: {reason})" if reason else impl.name, impl.name))
    return tuple(out)


def fields(
    manager: Any,
    *,
    groups: Iterable[str] = TRAIN_GROUPS,
    keys: Iterable[str] | None = None,
    plugin_sections: bool = True,
) -> list[FieldSpec]:
    """The fields of the core keys in ``groups`` (in the config's order; only ``keys`` when given) and of every
    plugin section."""
    schema = config_schema(manager)
    defs = schema.get("$defs", {})
    wanted = set(groups)
    only = set(keys) if keys is not None else None
    out: list[FieldSpec] = []
    for key, prop in schema["properties"].items():
        group = prop.get("x-factory-group")
        if group is None or group not in wanted or key in PAGE_KEYS or (only is not None and key not in only):
            continue
        kind, optional, enums = _kind(prop, defs)
        choices = tuple((e, e) for e in enums)
        if key in REGISTRY_CHOICES:
            registry, many = REGISTRY_CHOICES[key]
            choices = _registry_choices(manager, registry)
            if key in ("template", "loader"):
                choices = (("auto", "auto"), *choices)
            kind = "multi" if many else "choice"
        if kind == "choice" and optional:
            choices = (("none", ""), *choices)
        out.append(_spec(key, group, kind, prop, choices, optional))
    if plugin_sections:
        for name, section in schema["properties"].items():
            if "x-factory-plugin" not in section:
                continue
            inner_defs = section.get("$defs", {})
            for option, prop in section.get("properties", {}).items():
                kind, optional, enums = _kind(prop, inner_defs)
                out.append(
                    _spec(
                        f"{name}.{option}",
                        name,
                        kind,
                        prop,
                        tuple((e, e) for e in enums),
                        optional,
                        section["x-factory-plugin"],
                        tuple(section.get("x-factory-used-by", ())),
                    )
                )
    return out


def _spec(
    key: str,
    group: str,
    kind: str,
    prop: Mapping[str, Any],
    choices: tuple[tuple[str, str], ...],
    optional: bool,
    plugin: str | None = None,
    used_by: tuple[str, ...] = (),
) -> FieldSpec:
    if kind == "tristate":
        choices = (("default", ""), ("true", "true"), ("false", "false"))
    return FieldSpec(
        key, group, kind, prop.get("default"), prop.get("description", ""), choices, optional, plugin, used_by
    )


def to_config(specs: Iterable[FieldSpec], values: Iterable[Any]) -> dict[str, Any]:
    """The config the page's values make: only keys that differ from their defaults, plugin options in sections."""
    config: dict[str, Any] = {}
    for spec, shown in zip(specs, values):
        value = spec.parse(shown)
        if value == spec.default or (spec.kind == "multi" and not value and not spec.default):
            continue
        if spec.plugin:
            section, option = spec.key.split(".", 1)
            config.setdefault(section, {})[option] = value
        else:
            config[spec.key] = value
    return config


def from_config(specs: Iterable[FieldSpec], config: Mapping[str, Any]) -> list[Any]:
    """The field values of a validated config (``RunConfig.to_dict()``)."""
    out = []
    for spec in specs:
        if spec.plugin:
            section, option = spec.key.split(".", 1)
            value = (config.get(section) or {}).get(option, spec.default)
        else:
            value = config.get(spec.key, spec.default)
        out.append(spec.shown(value))
    return out


@dataclass
class Checked:
    """A config checked as the CLI checks it: the validated config, or the error and the field it names."""

    config: Any = None
    error: str | None = None
    key: str | None = None


def check(data: Mapping[str, Any]) -> Checked:
    """Validate ``data`` with :func:`load_config`; an error keeps the CLI's sentence and the key it names."""
    try:
        return Checked(config=load_config(dict(data)))
    except ConfigError as exc:
        return Checked(error=str(exc), key=error_key(str(exc)))


def error_key(message: str) -> str | None:
    """The config key a one-sentence error names (``config key 'learning_rate': ...``), if any."""
    match = _KEY_IN_MESSAGE.search(message)
    if match:
        return match.group(1)
    for label, key in (
        ("method", "method"),
        ("stage", "stage"),
        ("optimizer", "optimizer"),
        ("quantization", "quantization"),
        ("patch", "patches"),
        ("lr_scheduler", "lr_scheduler"),
        ("template", "template"),
        ("callback", "callbacks"),
    ):
        if message.startswith(f"{label} '"):
            return key
    return None
