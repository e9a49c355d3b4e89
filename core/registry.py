"""Registered implementations and what they need to run.

An :class:`Implementation` is one named thing a plugin offers (a method, a template, a
stage...). It records its plugin and distribution, what it requires, and its options model,
and is only imported when a run uses it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement

from factory import hardware
from factory.errors import PluginError
from factory.hookspecs import LABELS

Device = Literal["any", "cpu", "cuda"]


@dataclass(frozen=True)
class Requires:
    """What an implementation needs: Python packages (PEP 508 strings), a device, a GPU level.

    ``device="cuda"`` means a CUDA GPU is required; ``min_compute_capability=(8, 0)`` further
    requires an Ampere-or-newer GPU. Checking never imports the packages themselves.
    """

    packages: tuple[str, ...] = ()
    device: Device = "any"
    min_compute_capability: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(self.packages))
        for spec in self.packages:
            try:
                Requirement(spec)
            except InvalidRequirement as exc:
                raise PluginError(f"requirement '{spec}' is not a valid package requirement: {exc}") from None
        if self.device not in ("any", "cpu", "cuda"):
            raise PluginError(f"device '{self.device}' is not one of any, cpu, cuda")
        if self.min_compute_capability is not None:
            object.__setattr__(self, "min_compute_capability", tuple(self.min_compute_capability))
            if self.device != "cuda":
                object.__setattr__(self, "device", "cuda")

    def unmet(self) -> str | None:
        """Why these requirements are not met on this machine, or None when they are.

        The device comes first: on a machine without the GPU, installing the packages would not help.
        """
        if self.device == "cuda":
            gpus = hardware.cuda_devices()
            need = self.min_compute_capability
            level = f" with compute capability >= {need[0]}.{need[1]}" if need else ""
            if not gpus:
                return f"needs a CUDA GPU{level}; none was found on this machine"
            if need and not any(g.capability >= need for g in gpus):
                best = max(g.capability for g in gpus)
                return f"needs a CUDA GPU{level}; the best here has {best[0]}.{best[1]}"
        for spec in self.packages:
            req = Requirement(spec)
            try:
                version = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                return f"needs the package '{spec}' (pip install '{spec}')"
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                return f"needs '{spec}' but {req.name} {version} is installed (pip install '{spec}')"
        return None

    def describe(self) -> str:
        parts = list(self.packages)
        if self.device != "any":
            cap = self.min_compute_capability
            parts.append(self.device + (f" (compute capability >= {cap[0]}.{cap[1]})" if cap else ""))
        return ", ".join(parts) or "nothing beyond factory-core"


# Kinds whose implementation is a class the core constructs with arguments; every other kind's
# class is instantiated once, with no arguments, on first use.
CONSTRUCTED_PER_USE = frozenset({"engines"})

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclass
class Implementation:
    """One registered implementation of one kind."""

    kind: str
    name: str
    target: Any
    plugin: str
    distribution: str
    version: str
    requires: Requires = field(default_factory=Requires)
    options: type | None = None
    section: str | None = None
    description: str = ""
    _checked: bool = field(default=False, repr=False)

    def unavailable_reason(self) -> str | None:
        return self.requires.unmet()

    def load(self) -> Any:
        """The implementation object: imports a ``"module:attr"`` target and instantiates a class on first use."""
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
            except Exception as exc:  # a plugin's import error is the user's to fix
                raise PluginError(
                    f"{LABELS[self.kind]} '{self.name}' from {self.distribution} failed to import "
                    f"'{self.target}': {exc.__class__.__name__}: {exc}"
                ) from exc
            self.target = obj
        if isinstance(self.target, type) and self.kind not in CONSTRUCTED_PER_USE:
            self.target = self.target()
            check_contract(self.kind, self.name, self.target, self.distribution)
        elif not self._checked:
            check_contract(self.kind, self.name, self.target, self.distribution)
        self._checked = True
        return self.target


def check_contract(kind: str, name: str, obj: Any, distribution: str) -> None:
    """Refuse an implementation that lacks what its kind's contract (:mod:`factory.contracts`) requires."""
    from factory.contracts import problems

    found = problems(kind, obj)
    if found:
        raise PluginError(
            f"{LABELS[kind]} '{name}' from {distribution} breaks its contract: it {'; it '.join(found)} "
            f"(see the {kind} contract in docs/plugins.md)"
        )


def validate_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{kind} name {name!r} is invalid; use lower-case letters, digits, '-', '_' or '.'")
    return name
