"""Tool definitions and tool calls as chat templates read them from a standard record.

A record keeps tools as a JSON list of function specs and a function_call message as its call(s)
in JSON; this module turns both into Python values and writes them back as JSON exactly as
Hugging Face chat templates do (``tojson``: ``json.dumps`` without ASCII escaping), so a template
written as data renders the same bytes as the family's Jinja template.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from factory.errors import DataError

CALL_ID_LENGTH = 9  # Mistral's tokenizers refuse other lengths; other families ignore ids


@dataclass(frozen=True)
class ToolCall:
    """One call of a function_call turn; ``id`` is the call's own or a stable one derived from it."""

    name: str
    arguments: Any
    id: str


def parse_tools(tools: str | Sequence | Mapping) -> list[dict]:
    """Tool definitions (a JSON string, a list or one dict) as bare function specs.

    OpenAI's ``{"type": "function", "function": {...}}`` wrapper is removed so each template can
    write the definitions in its own family's form.
    """
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"the tool definitions {short(tools)} are not valid JSON ({exc.msg}); write them as a JSON list of "
                "function specs with name, description and parameters"
            ) from None
    specs = [tools] if isinstance(tools, Mapping) else list(tools)
    out = []
    for spec in specs:
        if isinstance(spec, Mapping) and isinstance(spec.get("function"), Mapping):
            spec = spec["function"]
        if not isinstance(spec, Mapping):
            raise DataError(
                f"the tool definition {short(json.dumps(spec))} is not a JSON object; give each tool as one"
            )
        out.append(dict(spec))
    return out


def parse_tool_calls(content: str, index: int = 0) -> list[tuple[str, Any]]:
    """The ``(name, arguments)`` pairs of a function_call turn, whose content is the call(s) as JSON."""
    return [(call.name, call.arguments) for call in tool_calls(content, index)]


def tool_calls(content: str, index: int = 0) -> list[ToolCall]:
    """The calls of a function_call turn; a call without an ``id`` gets one derived from its position and text."""
    where = f"the function_call in message {index + 1}"
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        raise DataError(
            f"{where} is not JSON: {short(content)}; write it as "
            '{"name": ..., "arguments": {...}} or a list of such objects'
        ) from None
    calls = []
    for number, call in enumerate(data if isinstance(data, list) else [data]):
        given_id = call.get("id") if isinstance(call, Mapping) else None
        if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
            call = call["function"]
        name = call.get("name") if isinstance(call, Mapping) else None
        if not isinstance(name, str) or not name:
            raise DataError(f'{where} has no "name": {short(content)}; give each call a name and its arguments')
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        call_id = given_id if isinstance(given_id, str) and given_id else stable_call_id(index, number, name, arguments)
        calls.append(ToolCall(name, arguments, call_id))
    return calls


def stable_call_id(index: int, number: int, name: str, arguments: Any) -> str:
    """A 9-character alphanumeric id (Mistral's form), the same for the same call at the same place.

    Families that write call ids need one per call; data rarely carries them, and a random id
    would make every rendering of a record differ (and defeat the tokenization cache).
    """
    digest = hashlib.sha256(f"{index}:{number}:{name}:{to_json(arguments)}".encode()).digest()
    alphabet = string.ascii_letters + string.digits
    return "".join(alphabet[byte % len(alphabet)] for byte in digest[:CALL_ID_LENGTH])


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON as the ``tojson`` filter of Hugging Face chat templates writes it."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def wrapped(spec: Mapping) -> dict:
    """A bare function spec in OpenAI's wrapper, the form chat templates receive as ``tools``."""
    return {"type": "function", "function": dict(spec)}


def short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
