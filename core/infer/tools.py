"""Reading tool calls back out of a model's answer, in the syntax its chat template taught it.

A template writes a call with its ``tool_call`` format (``{{name}}`` and ``{{arguments}}``),
joins several with ``tool_call_separator`` and wraps them in ``tool_calls``; this module parses
that same syntax, tolerant of whitespace. Two shapes cover the templates: the call is a JSON
object (generic, ChatML/Qwen, Llama 3), or name and arguments are laid out in text (GLM-4,
Mistral Small's ``[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}``), the arguments possibly one element
each (``tool_call_argument``: MiniCPM, Hunyuan, Seed-OSS), their values JSON or Python literals as the
template writes them (``tool_call_argument_value``).
Tool-call parsers in serving projects are written per model family; here the template's own
format drives the parser, so a new template needs no parser code.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{(name|arguments|id|number)\}\}")
_ARGUMENT = re.compile(r"\{\{(key|value)\}\}")
_DECODER = json.JSONDecoder()


class _NoMatch(Exception):
    pass


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _literal(text: str, pos: int, literal: str) -> int:
    """Match ``literal`` at ``pos`` with whitespace free on both sides; the position after it."""
    for char in literal:
        if char.isspace():
            continue
        pos = _skip_space(text, pos)
        if not text.startswith(char, pos):
            raise _NoMatch
        pos += 1
    return pos


def _json_value(text: str, pos: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, _skip_space(text, pos))
    except json.JSONDecodeError:
        raise _NoMatch from None


def _arguments(value: Any) -> Any:
    if isinstance(value, str):  # some models write the arguments as a JSON string
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _argument_value(text: str, python: bool = False) -> Any:
    """A value as an XML-like call writes it: text as it is, other values as JSON, or, where the template
    writes Python's ``str()`` of them (``python``), as the Python literal (``True``, ``{'a': 1}``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if not python:
            return text
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return text
    return text if isinstance(value, str) else value


def _json_keys(fmt: str) -> tuple[str, str]:
    """The keys a JSON-shaped call format puts the name and the arguments under."""
    probe = fmt.replace("{{name}}", "@name@").replace("{{arguments}}", '"@arguments@"')
    try:
        spec = json.loads(probe)
    except json.JSONDecodeError:
        return "name", "arguments"
    keys = {value: key for key, value in spec.items() if isinstance(value, str)} if isinstance(spec, dict) else {}
    return keys.get("@name@", "name"), keys.get("@arguments@", "arguments")


def _calls_from_json(value: Any, keys: tuple[str, str]) -> list[tuple[str, Any]]:
    name_key, arguments_key = keys
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Mapping) and isinstance(item.get("function"), Mapping):
            item = item["function"]
        name = item.get(name_key, item.get("name")) if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _NoMatch
        arguments = item.get(arguments_key, item.get("arguments", item.get("parameters", {})))
        calls.append((name, _arguments(arguments)))
    return calls


class ToolCallParser:
    """Parses answers written in one template's tool-call syntax."""

    def __init__(self, template: Any) -> None:
        before, _, after = template.tool_calls.partition("{{calls}}")
        self.wrap = (before, after)
        self.separator = template.tool_call_separator
        fmt = template.tool_call
        first, last = fmt.find("{"), fmt.rfind("}")
        opens_json = first >= 0 and not fmt.startswith("{{", first) and "{{name}}" in fmt[first : last + 1]
        # JSON shape: text before the object, the object, text after it.
        self.json_frame = (fmt[:first], fmt[last + 1 :]) if opens_json else None
        self.json_keys = _json_keys(fmt[first : last + 1]) if opens_json else ("name", "arguments")
        self.parts = _PLACEHOLDER.split(fmt)  # text shape: literal, placeholder, literal, ...
        argument = getattr(template, "tool_call_argument", None)  # XML-like calls: one element per argument
        self.argument_parts = _ARGUMENT.split(argument) if argument else None
        self.python_values = getattr(template, "tool_call_argument_value", "json") != "json"

    def parse(self, text: str) -> list[tuple[str, Any]] | None:
        """The ``(name, arguments)`` calls when the whole answer is tool calls, else None."""
        closing = self.wrap[1].strip()
        try:
            pos = _literal(text, 0, self.wrap[0])
            calls = []
            while True:
                pos, found = self._call(text, pos)
                calls += found
                pos = _skip_space(text, pos)
                if pos >= len(text):  # the closing text may be a stop word, where generation ended
                    return calls
                if closing and text.startswith(closing, pos):
                    return calls if _skip_space(text, pos + len(closing)) == len(text) else None
                pos = _literal(text, pos, self.separator)
        except _NoMatch:
            return None

    def _call(self, text: str, pos: int) -> tuple[int, list[tuple[str, Any]]]:
        if self.json_frame is not None:
            pos = _literal(text, pos, self.json_frame[0])
            value, pos = _json_value(text, pos)
            return _literal(text, pos, self.json_frame[1]), _calls_from_json(value, self.json_keys)
        name, arguments = None, None
        for index, part in enumerate(self.parts):
            if index % 2 == 0:
                pos = _literal(text, pos, part)
            elif part == "arguments" and self.argument_parts is not None:
                pos, arguments = self._argument_elements(text, pos)
            elif part == "arguments":
                value, pos = _json_value(text, pos)
                arguments = _arguments(value)
            elif part in ("id", "number"):  # a call id or number the model wrote: read over it
                pos, _ = self._name(text, pos, self.parts[index + 1])
            else:
                pos, name = self._name(text, pos, self.parts[index + 1])
        if not name:
            raise _NoMatch
        return pos, [(name, arguments if arguments is not None else {})]

    def _argument_elements(self, text: str, pos: int) -> tuple[int, dict[str, Any]]:
        """Arguments written one element each (``<param name="KEY">VALUE</param>``), as many as there are."""
        parts, arguments = self.argument_parts, {}
        while True:
            start, key, value = pos, None, None
            try:
                for index, part in enumerate(parts):
                    if index % 2 == 0:
                        pos = _literal(text, pos, part)
                    elif part == "key":
                        pos, key = self._name(text, pos, parts[index + 1])
                    else:  # the value runs to the literal that closes it, less the format's own whitespace
                        before, after = parts[index - 1], parts[index + 1]
                        end = text.find(after.strip() or "\n", pos)
                        if end < 0:
                            raise _NoMatch
                        raw = text[pos:end]
                        opening, closing = before[len(before.rstrip()) :], after[: len(after) - len(after.lstrip())]
                        raw = raw[len(opening) :] if opening and raw.startswith(opening) else raw
                        raw = raw[: -len(closing)] if closing and raw.endswith(closing) else raw
                        value, pos = _argument_value(raw, self.python_values), end
            except _NoMatch:
                return start, arguments
            if not key:
                return start, arguments
            arguments[key] = value

    @staticmethod
    def _name(text: str, pos: int, following: str) -> tuple[int, str]:
        stop = next((char for char in following if not char.isspace()), None)
        pos = _skip_space(text, pos)
        start = pos
        while pos < len(text) and not text[pos].isspace() and text[pos] != stop:
            pos += 1
        return pos, text[start:pos]


def extract_tool_calls(template: Any, text: str) -> list[tuple[str, Any]] | None:
    """The tool calls ``text`` makes in ``template``'s syntax, or None when it is a plain answer."""
    reasoning = getattr(template, "reasoning", None)
    closing = reasoning.format.partition("{{reasoning}}")[2].strip() if reasoning is not None else ""
    if closing and closing in text:  # the calls follow the model's reasoning block
        text = text.split(closing)[-1]
    if not text.strip():
        return None
    return ToolCallParser(template).parse(text)
