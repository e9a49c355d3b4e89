"""The standard record: the one schema every aligner produces, so any data sets can be merged.

Downstream steps (chat templates, tokenization) only ever see this shape; adding a new data
format means writing an aligner to it, never touching the steps after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Roles a message may have; prompt side: user/observation, response side: assistant/function_call.
PROMPT_ROLES = ("user", "observation")
RESPONSE_ROLES = ("assistant", "function_call")
ROLES = PROMPT_ROLES + RESPONSE_ROLES

RECORD_KEYS = ("messages", "system", "tools", "chosen", "rejected", "label", "text")


def _features() -> Any:
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features(
        {
            "messages": List(message),
            "system": Value("string"),
            "tools": Value("string"),
            "chosen": message,
            "rejected": message,
            "label": Value("bool"),
            "text": Value("string"),
        }
    )


def __getattr__(name: str) -> Any:
    # RECORD_FEATURES is built on first use so importing this module (e.g. from an aligner
    # plugin at registration time) does not import datasets.
    if name == "RECORD_FEATURES":
        value = _features()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def empty_record() -> dict[str, Any]:
    """A record with every key at its 'absent' value; aligners fill in what they have."""
    return {"messages": [], "system": "", "tools": "", "chosen": None, "rejected": None, "label": None, "text": None}


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def fill_placeholders(record: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """Replace ``{{key}}`` in every text of ``record`` by ``values[key]``; unknown keys stay as they are."""
    if not values:
        return record

    def fill(text: Any) -> Any:
        if not isinstance(text, str) or "{{" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    for key in ("system", "tools", "text"):
        record[key] = fill(record[key])
    record["messages"] = [{**msg, "content": fill(msg["content"])} for msg in record["messages"]]
    for key in ("chosen", "rejected"):
        if record[key] is not None:
            record[key] = {**record[key], "content": fill(record[key]["content"])}
    return record


def first_turn(row: Mapping[str, Any] | None, column: str) -> Mapping[str, Any] | None:
    """The first turn of a list-of-turns column, when it is a mapping."""
    turns = (row or {}).get(column)
    if isinstance(turns, list) and turns and isinstance(turns[0], Mapping):
        return turns[0]
    return None
