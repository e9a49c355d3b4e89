"""The built-in aligners: alpaca, sharegpt, openai and text data to the standard record.

Each aligner reads one raw row and returns a record of :mod:`factory.data.record`. Preference
pairs (``ranking: true`` with chosen/rejected columns) and KTO data (a ``kto_tag`` column
holding a boolean) are handled by every conversational aligner, because they differ from
supervised data only in how the answer is given, not in how the conversation is written.

Two exceptions let an aligner (built-in or a plugin's) report trouble with one row:
:class:`BadRow` for a malformed row (the load stops with a sentence naming the file and the
row) and :class:`SkipRow` for a well-formed row that cannot be trained on (it is dropped and
counted under its reason). This module is pure Python so plugins can import it cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from factory.data.record import PROMPT_ROLES, RESPONSE_ROLES, empty_record, first_turn
from factory.data.resolve import DatasetSpec


class BadRow(Exception):
    """A row that does not have the shape its format promises."""


class SkipRow(Exception):
    """A row that is well formed but unusable; ``str(exc)`` is the reason it is counted under."""


# -- helpers shared by the aligners ----------------------------------------------------------


def text_of(row: Mapping[str, Any], column: str | None, *, required: bool) -> str:
    """The string in ``row[column]``; "" for an absent optional value."""
    value = row.get(column) if column else None
    if value is None:
        if required:
            raise BadRow(f"'{column}' is missing or null")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(f"'{column}' holds {type(value).__name__} {_short(value)}, not text")
    return str(value)


def tools_of(row: Mapping[str, Any], column: str | None) -> str:
    """Tool definitions as a JSON string (data sets store either a string or the JSON itself)."""
    value = row.get(column) if column else None
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def label_of(row: Mapping[str, Any], column: str) -> bool:
    """A KTO verdict: booleans, 0/1 and the words true/false are accepted."""
    value = row.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise BadRow(f"'{column}' holds {_short(value)}, not a boolean label (true/false)")


def check_shape(record: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """Skip rows whose turns do not alternate prompt/response or end where their kind needs.

    Several observations in a row are one prompt turn: the results of a turn's parallel calls.
    """
    messages = record["messages"]
    if not messages:
        raise SkipRow("no conversation turns")
    expected = PROMPT_ROLES
    for i, message in enumerate(messages):
        if message["role"] == "observation" and i > 0 and messages[i - 1]["role"] == "observation":
            continue
        if message["role"] not in expected:
            raise SkipRow("turns that do not alternate user/assistant")
        expected = RESPONSE_ROLES if expected is PROMPT_ROLES else PROMPT_ROLES
    ends_with_prompt = messages[-1]["role"] in PROMPT_ROLES
    if spec.ranking:
        if not ends_with_prompt:
            raise SkipRow("preference prompts that do not end with a user turn")
        for key in ("chosen", "rejected"):
            if record[key]["role"] not in RESPONSE_ROLES:
                raise SkipRow(f"{key} answers that are not assistant turns")
    elif ends_with_prompt:
        raise SkipRow("conversations that do not end with an assistant turn")
    return record


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # the names OpenAI-style data give it


def with_reasoning(content: str, message: Mapping[str, Any], where: str) -> str:
    """An answer with its ``reasoning_content`` written inline, in the ``<think>`` form reasoning models write.

    The standard record has one text per message; chat templates of reasoning families read the
    reasoning back from that span (and drop, keep or train it, see ``reasoning`` in the config).
    """
    reasoning = next((message[key] for key in REASONING_KEYS if message.get(key) is not None), None)
    if reasoning is None or "</think>" in content:  # no reasoning, or the content already carries it
        return content
    if not isinstance(reasoning, str):
        raise BadRow(f"{where} has reasoning {_short(reasoning)}, not text")
    if not reasoning.strip():
        return content
    thought, answer = reasoning.strip("\n"), content.lstrip("\n")
    return f"<think>\n{thought}\n</think>\n\n{answer}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shared_columns(columns: set[str], first_row: Mapping[str, Any] | None) -> dict[str, str]:
    """The column roles every conversation format reads the same way: pairs, KTO labels, system, tools."""
    found: dict[str, str] = {}
    if {"chosen", "rejected"} <= columns:
        found.update(chosen="chosen", rejected="rejected")
    for name in ("label", "kto_tag"):
        if name in columns and first_row is not None and isinstance(first_row.get(name), bool):
            found["kto_tag"] = name
            break
    for name in ("system", "tools"):
        if name in columns:
            found[name] = name
    return found


class ConversationAligner:
    """What alpaca, sharegpt and openai share: system, tools, preference pairs and KTO labels."""

    name = "conversation"
    priority = 0
    messages_default: str | None = None
    system_default = "system"
    tools_default = "tools"
    roles: tuple[str, ...] = ("system", "tools", "chosen", "rejected", "kto_tag")  # column roles it reads

    def required(self, spec: DatasetSpec) -> set[str]:
        return set()

    def columns(self, spec: DatasetSpec) -> set[str]:
        """Required columns plus every column the descriptor maps explicitly."""
        needed = self.required(spec)
        if spec.ranking:
            needed |= {spec.column("chosen", "chosen"), spec.column("rejected", "rejected")}
        if spec.kto:
            needed.add(spec.column("kto_tag"))
        return needed | {col for role, col in spec.columns.items() if role in self.roles}

    def conversation(self, row: Mapping[str, Any], spec: DatasetSpec, record: dict[str, Any]) -> None:
        """Fill ``record['messages']`` (and ``system`` when the turns carry it)."""
        raise NotImplementedError

    def answer(self, value: Any, key: str, spec: DatasetSpec) -> dict[str, str]:
        """One preference answer as a message."""
        if isinstance(value, str):
            return {"role": "assistant", "content": value}
        raise BadRow(f"'{spec.column(key, key)}' holds {_short(value)}, not an answer text")

    def align(self, row: Mapping[str, Any], spec: DatasetSpec) -> dict[str, Any]:
        record = empty_record()
        record["system"] = text_of(row, spec.column("system", self.system_default), required=False)
        record["tools"] = tools_of(row, spec.column("tools", self.tools_default))
        self.conversation(row, spec, record)
        if spec.ranking:
            for key in ("chosen", "rejected"):
                column = spec.column(key, key)
                if row.get(column) is None:
                    raise BadRow(f"'{column}' is missing or null")
                record[key] = self.answer(row[column], key, spec)
        if spec.kto:
            record["label"] = label_of(row, spec.column("kto_tag"))
        return check_shape(record, spec)


# -- the formats -----------------------------------------------------------------------------


class AlpacaAligner(ConversationAligner):
    """instruction (+ input) -> output, with optional history pairs and a system prompt."""

    name = "alpaca"
    roles = ConversationAligner.roles + ("prompt", "query", "response", "history")

    priority = 10  # after the list-of-turns formats: a row may carry both kinds of columns

    def detect(self, column_names: list[str], first_row: Mapping[str, Any] | None) -> dict[str, str] | None:
        """instruction/prompt/question with output/response/completion/answer (or a preference pair)."""
        cols = set(column_names)
        found = shared_columns(cols, first_row)
        prompt = next((c for c in ("instruction", "prompt", "question") if c in cols), None)
        response = next((c for c in ("output", "response", "completion", "answer") if c in cols), None)
        ranking = "chosen" in found
        if prompt is None or (response is None and not ranking):
            return None
        found["prompt"] = prompt
        if response is not None and not ranking:
            found["response"] = response
        for name, role in (("input", "query"), ("history", "history")):
            if name in cols:
                found[role] = name
        return found

    def required(self, spec: DatasetSpec) -> set[str]:
        needed = {spec.column("prompt", "instruction")}
        if not spec.ranking:
            needed.add(spec.column("response", "output"))
        return needed

    def conversation(self, row: Mapping[str, Any], spec: DatasetSpec, record: dict[str, Any]) -> None:
        messages = record["messages"]
        history_col = spec.column("history", "history")
        for pair in row.get(history_col) or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise BadRow(f"'{history_col}' holds {_short(pair)}, not a [question, answer] pair of texts")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        prompt = text_of(row, spec.column("prompt", "instruction"), required=True)
        query = text_of(row, spec.column("query", "input"), required=False)
        messages.append({"role": "user", "content": f"{prompt}\n{query}" if query else prompt})
        if not spec.ranking:
            response = text_of(row, spec.column("response", "output"), required=True)
            messages.append({"role": "assistant", "content": response})


class ShareGPTAligner(ConversationAligner):
    """A list of turns with role and content tags (``from``/``value``, ``human``/``gpt`` by default)."""

    name = "sharegpt"
    messages_default = "conversations"
    roles = ConversationAligner.roles + ("messages",)
    priority = 20

    def detect(self, column_names: list[str], first_row: Mapping[str, Any] | None) -> dict[str, str] | None:
        """A messages/conversations column whose turns are from/value pairs."""
        turns = next((c for c in ("conversations", "messages") if c in column_names), None)
        turn = first_turn(first_row, turns) if turns else None
        if turn is None or not {"from", "value"} <= set(turn):
            return None
        return {**shared_columns(set(column_names), first_row), "messages": turns}

    def required(self, spec: DatasetSpec) -> set[str]:
        return {spec.column("messages", self.messages_default)}

    def _role_map(self, spec: DatasetSpec) -> dict[str, str]:
        return {
            spec.tag("user_tag"): "user",
            spec.tag("assistant_tag"): "assistant",
            spec.tag("observation_tag"): "observation",
            spec.tag("function_tag"): "function_call",
        }

    def _turn(self, turn: Any, where: str, spec: DatasetSpec) -> tuple[str, str]:
        role_tag, content_tag = spec.tag("role_tag"), spec.tag("content_tag")
        if not isinstance(turn, Mapping) or role_tag not in turn or content_tag not in turn:
            keys = ", ".join(turn) if isinstance(turn, Mapping) else type(turn).__name__
            raise BadRow(
                f"{where} has {keys} instead of the keys {role_tag}/{content_tag} "
                "(set tags.role_tag and tags.content_tag in the descriptor)"
            )
        content = turn[content_tag]
        if not isinstance(content, str):
            raise BadRow(f"{where} has {content_tag} {_short(content)}, not text")
        return turn[role_tag], content

    def conversation(self, row: Mapping[str, Any], spec: DatasetSpec, record: dict[str, Any]) -> None:
        column = spec.column("messages", self.messages_default)
        turns = row.get(column)
        if not isinstance(turns, list):
            raise BadRow(f"'{column}' holds {_short(turns)}, not a list of turns")
        roles = self._role_map(spec)
        system_tag = spec.tag("system_tag")
        for i, turn in enumerate(turns):
            role, content = self._turn(turn, f"turn {i + 1} of '{column}'", spec)
            if role == system_tag:
                if i != 0:
                    raise SkipRow("system turns inside the conversation")
                record["system"] = record["system"] or content
                continue
            if role not in roles:
                raise BadRow(
                    f"turn {i + 1} of '{column}' has the role '{role}', not one of {', '.join(roles)}"
                    f" or {system_tag} (set the role tags in the descriptor)"
                )
            record["messages"].append({"role": roles[role], "content": content})

    def answer(self, value: Any, key: str, spec: DatasetSpec) -> dict[str, str]:
        if isinstance(value, Mapping):
            role, content = self._turn(value, f"'{spec.column(key, key)}'", spec)
            return {"role": self._role_map(spec).get(role, role), "content": content}
        return super().answer(value, key, spec)


class OpenAIAligner(ConversationAligner):
    """OpenAI chat ``messages``: system/user/assistant/tool roles, assistant ``tool_calls``."""

    name = "openai"
    messages_default = "messages"
    roles = ConversationAligner.roles + ("messages",)
    priority = 20

    def detect(self, column_names: list[str], first_row: Mapping[str, Any] | None) -> dict[str, str] | None:
        """A messages/conversations column whose turns carry a role (or that is empty in the first row)."""
        turns = next((c for c in ("messages", "conversations") if c in column_names), None)
        if turns is None:
            return None
        turn = first_turn(first_row, turns)
        if turn is not None and "role" not in turn:
            return None
        return {**shared_columns(set(column_names), first_row), "messages": turns}

    def required(self, spec: DatasetSpec) -> set[str]:
        return {spec.column("messages", self.messages_default)}

    @staticmethod
    def _content(message: Mapping[str, Any], where: str) -> str:
        content = message.get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts: only text parts carry over
            if any(isinstance(p, Mapping) and p.get("type") not in (None, "text") for p in content):
                raise SkipRow("messages with image or audio parts")
            return "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
        raise BadRow(f"{where} has content {_short(content)}, not text")

    @staticmethod
    def _calls(calls: list[Any], where: str) -> str:
        """Tool calls as the function_call content: {"name", "arguments"[, "id"]} (a list for parallel calls)."""
        out = []
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or not function.get("name"):
                raise BadRow(f"{where} has the tool call {_short(call)}, without function.name")
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass  # keep arguments that are not JSON as the text they are
            call_id = call.get("id")
            out.append({"name": function["name"], "arguments": arguments, **({"id": call_id} if call_id else {})})
        return json.dumps(out[0] if len(out) == 1 else out, ensure_ascii=False)

    def _message(self, message: Any, where: str) -> dict[str, str] | None:
        """One message in the standard roles; None for a system message."""
        if not isinstance(message, Mapping) or "role" not in message:
            raise BadRow(f"{where} is {_short(message)}, not a message with a role")
        role = message["role"]
        content = self._content(message, where)
        if role in ("system", "developer"):
            return None
        if role == "user":
            return {"role": "user", "content": content}
        if role == "assistant":
            if message.get("tool_calls"):
                if content.strip():
                    raise SkipRow("assistant turns with both text and tool calls")
                return {"role": "function_call", "content": self._calls(message["tool_calls"], where)}
            return {"role": "assistant", "content": with_reasoning(content, message, where)}
        if role in ("tool", "function"):
            return {"role": "observation", "content": content}
        raise BadRow(f"{where} has the role '{role}', not one of system, user, assistant, tool")

    def conversation(self, row: Mapping[str, Any], spec: DatasetSpec, record: dict[str, Any]) -> None:
        column = spec.column("messages", self.messages_default)
        messages = row.get(column)
        if not isinstance(messages, list):
            raise BadRow(f"'{column}' holds {_short(messages)}, not a list of messages")
        out = record["messages"]
        for i, raw in enumerate(messages):
            where = f"message {i + 1} of '{column}'"
            message = self._message(raw, where)
            if message is None:
                if out:
                    raise SkipRow("system turns inside the conversation")
                record["system"] = record["system"] or self._content(raw, where)
            else:
                out.append(message)  # the results of parallel calls stay one observation each

    def answer(self, value: Any, key: str, spec: DatasetSpec) -> dict[str, str]:
        where = f"'{spec.column(key, key)}'"
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, Mapping):
            message = self._message(value, where)
            if message is None:
                raise BadRow(f"{where} is a system message, not an answer")
            return message
        return super().answer(value, key, spec)


class TextAligner:
    """Plain text for pre-training: one text column."""

    name = "text"
    priority = -10  # the fallback: any single column reads as text

    def detect(self, column_names: list[str], first_row: Mapping[str, Any] | None) -> dict[str, str] | None:
        if "text" in column_names or len(column_names) == 1:
            return {"text": "text" if "text" in column_names else column_names[0]}
        return None

    def columns(self, spec: DatasetSpec) -> set[str]:
        return {spec.column("text", "text")}

    def align(self, row: Mapping[str, Any], spec: DatasetSpec) -> dict[str, Any]:
        text = text_of(row, spec.column("text", "text"), required=False)
        if not text.strip():
            raise SkipRow("empty texts")
        record = empty_record()
        record["text"] = text
        return record


ALPACA = AlpacaAligner()
SHAREGPT = ShareGPTAligner()
OPENAI = OpenAIAligner()
TEXT = TextAligner()
