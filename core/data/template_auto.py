"""Choosing a template: ``template: NAME`` from the registry, or ``auto`` from the tokenizer's files.

``auto`` prefers the tokenizer's own Jinja template (byte-exact by construction). When that
template is not prefix-consistent (Qwen3, DeepSeek-R1 drop past reasoning) or absent, the
packaged template of that model *version* is told apart by what the tokenizer files hold: texts
of the Jinja template (``detect``), special tokens of the vocabulary (``detect_tokens``), and
last the model type of its config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factory.data.template_format import AUTO, DEFAULT, Template
from factory.data.template_jinja import JinjaTemplate, NotPrefixConsistent, jinja_text
from factory.errors import FactoryError, PluginError, one_of


def get_template(
    name: str, tokenizer: Any, manager: Any, *, reasoning: str | None = None, enable_thinking: bool | None = None
) -> Template:
    """The chat template for ``template: name``, bound to ``tokenizer``.

    ``auto`` uses the tokenizer's own Jinja template when it has a prefix-consistent one, else the
    packaged template its files identify, else the one declared for the model's type
    (``model_types``), else ``default``. Any other name (or alias) comes from the plugin
    registry; an unknown one is a PluginError listing those available. ``reasoning`` and
    ``enable_thinking`` (the run's settings) become the defaults of its renders.
    """
    template = _find(name, tokenizer, manager)
    if (reasoning is not None or enable_thinking is not None) and isinstance(template, Template):
        template = template.configure(reasoning=reasoning, enable_thinking=enable_thinking)
    return template


def _find(name: str, tokenizer: Any, manager: Any) -> Template:
    if name == AUTO:
        return _auto(tokenizer, manager)
    template = manager.load("templates", name)
    if not callable(getattr(template, "render", None)):
        impl = manager.get("templates", name)
        raise PluginError(
            f"template '{name}' from {impl.distribution} is a {type(template).__name__} without render(); "
            "its plugin must register a factory.data.template.Template"
        )
    if isinstance(template, Template) and tokenizer is not None:
        return template.bind(tokenizer)
    return template


def _auto(tokenizer: Any, manager: Any) -> Template:
    if tokenizer is None:
        raise PluginError("template: auto needs the model's tokenizer to choose; pass it or set template: NAME")
    by_type = template_for_model_type(model_type_of(tokenizer), manager)
    detected = detect_template(tokenizer, manager)
    if getattr(tokenizer, "chat_template", None):
        try:
            return JinjaTemplate.from_tokenizer(tokenizer, suggestion=detected or by_type or "")
        except NotPrefixConsistent:
            if not detected:
                raise
        return _find(detected, tokenizer, manager)
    return _find(detected or by_type or DEFAULT, tokenizer, manager)


def _templates(manager: Any) -> list[tuple[Any, Any]]:
    """(implementation, template) of every usable registered template, aliases left out."""
    out = []
    for impl in manager.implementations("templates"):
        if impl.unavailable_reason():
            continue
        try:
            template = impl.load()
        except FactoryError:
            continue
        if getattr(template, "name", impl.name) == impl.name:  # an alias is listed under its template's name
            out.append((impl, template))
    return out


def detect_template(tokenizer: Any, manager: Any) -> str | None:
    """The registered template whose ``detect`` texts are all in the tokenizer's Jinja template, or
    (without one) whose ``detect_tokens`` are all in its vocabulary; the most specific one wins."""
    text = jinja_text(tokenizer)
    if text:
        found = [
            (len(t.detect), impl.name)
            for impl, t in _templates(manager)
            if getattr(t, "detect", None) and all(part in text for part in t.detect)
        ]
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        found = [
            (len(t.detect_tokens), impl.name)
            for impl, t in _templates(manager)
            if getattr(t, "detect_tokens", None) and all(token in vocab for token in t.detect_tokens)
        ]
    if not found:
        return None
    best = max(size for size, _ in found)
    winners = sorted(name for size, name in found if size == best)
    if len(winners) > 1:
        by_type = template_for_model_type(model_type_of(tokenizer), manager)
        return by_type if by_type in winners else None
    return winners[0]


def model_type_of(tokenizer: Any) -> str | None:
    """The ``model_type`` in the config.json next to the tokenizer, when it was loaded from a folder."""
    config = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def template_for_model_type(model_type: str | None, manager: Any) -> str | None:
    """The registered template that declares ``model_type``; a third party's wins over the core's."""
    if not model_type:
        return None
    matches = [
        impl for impl, template in _templates(manager) if model_type in (getattr(template, "model_types", None) or ())
    ]
    preferred = [impl for impl in matches if impl.distribution != "factory-core"] or matches
    if len(preferred) > 1:
        raise PluginError(
            f"model type '{model_type}' is claimed by the templates {one_of(i.name for i in preferred)}; "
            "set template: NAME to choose one"
        )
    return preferred[0].name if preferred else None
