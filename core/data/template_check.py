"""``factory templates check``: render conversations with a factory template and with an official
Jinja template, and show the first byte where they differ.

The official side is rendered by transformers' own renderer (``render_jinja_template``, what
``apply_chat_template`` uses), with the family's bos/eos tokens, so a user can verify a model
factory has never seen. Each conversation is checked in three modes: the whole conversation,
the conversation before its final answer with a generation prompt, and the same ending open.
The only difference accepted is the template's declared ``final_stop`` after the final answer
(an end token the official template does not write, which training needs to teach stopping).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from factory.data.record import RESPONSE_ROLES
from factory.data.template_format import Reasoning, Template
from factory.data.template_render import split_reasoning
from factory.data.template_text import fill
from factory.data.template_tools import parse_tools, tool_calls, wrapped
from factory.errors import DataError

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
    {
        "name": "get_forecast",
        "description": "Forecast for the coming days",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "hours": {"type": "array", "items": {"type": "integer"}},
                "filters": {"type": "object"},
            },
            "required": ["city", "days"],
        },
    },
]


@dataclass
class Conversation:
    """A conversation in standard-record form: system prompt, tool definitions (JSON) and messages."""

    name: str
    messages: list[dict]
    system: str = ""
    tools: str = ""
    needs: frozenset[str] = field(default_factory=frozenset)  # system, tools, tool_calls, parallel_calls, reasoning


def _call(name: str, arguments: dict, call_id: str) -> str:
    return json.dumps({"name": name, "arguments": arguments, "id": call_id}, ensure_ascii=False)


CHAT = [
    {"role": "user", "content": "  Bonjour ! Quelle heure est-il à Zürich ?\n"},
    {"role": "assistant", "content": "\nIl est midi 🕛, heure d'été.  \n"},
    {"role": "user", "content": "Et à 東京 ?\n\n"},
    {"role": "assistant", "content": "  Il y est 19 h.\n"},
]
TOOL_CHAT = [
    {"role": "user", "content": "What's the weather in Paris? "},
    {"role": "function_call", "content": _call("get_weather", {"city": "Paris", "unit": "°C"}, "a1B2c3D4e")},
    {"role": "observation", "content": '{"temperature": 22, "sky": "dégagé"}'},
    {"role": "assistant", "content": "It is 22 °C with a clear sky in Paris."},
]
PARALLEL_CHAT = [  # two calls in one turn, one result each
    {"role": "user", "content": "Weather in Paris and in Tokyo?"},
    {
        "role": "function_call",
        "content": json.dumps(
            [
                {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "pAr1s0001"},
                {"name": "get_weather", "arguments": {"city": "東京"}, "id": "t0ky00002"},
            ],
            ensure_ascii=False,
        ),
    },
    {"role": "observation", "content": '{"temperature": 22}'},
    {"role": "observation", "content": '{"temperature": 27}'},
    {"role": "assistant", "content": "22 °C in Paris, 27 °C in Tokyo."},
]
ARGUMENTS_CHAT = [  # arguments that are not text: JSON and Python's str() write them differently
    {"role": "user", "content": "Forecast for Oslo?"},
    {
        "role": "function_call",
        "content": _call(
            "get_forecast",
            {"city": "Oslo", "days": 3, "metric": True, "ratio": 0.5, "hours": [9, 12], "filters": {"rain": False}},
            "f0reCast9",
        ),
    },
    {"role": "observation", "content": "sunny"},
    {"role": "assistant", "content": "Sunny for three days."},
]
REASONING_CHAT = [
    {"role": "user", "content": "What is 17 × 3?"},
    {"role": "assistant", "content": "<think>\n17 × 3 = 51.\n</think>\n\n51."},
    {"role": "user", "content": "And 51 + 9?"},
    {"role": "assistant", "content": "<think>\n51 + 9 = 60, 六十.\n</think>\n\n60."},
]

SAMPLES = [
    Conversation("one-turn", CHAT[:2]),
    Conversation("multi-turn", CHAT),
    Conversation("system", CHAT, system="  Tu es un assistant concis.\n", needs=frozenset({"system"})),
    Conversation("tools", TOOL_CHAT, tools=json.dumps(TOOLS), needs=frozenset({"tools", "tool_calls"})),
    Conversation(
        "tools-system",
        TOOL_CHAT,
        system="Use tools when they help.",
        tools=json.dumps(TOOLS),
        needs=frozenset({"tools", "tool_calls", "system"}),
    ),
    Conversation("tool-definitions", CHAT[:2], tools=json.dumps(TOOLS), needs=frozenset({"tools"})),
    Conversation("tool-call", TOOL_CHAT[:2], tools=json.dumps(TOOLS), needs=frozenset({"tools", "tool_calls"})),
    Conversation("tool-results", TOOL_CHAT, needs=frozenset({"tool_calls"})),  # calls without definitions
    Conversation("tool-arguments", ARGUMENTS_CHAT, needs=frozenset({"tool_calls"})),
    Conversation("parallel-calls", PARALLEL_CHAT, needs=frozenset({"tool_calls", "parallel_calls"})),
    Conversation("reasoning", REASONING_CHAT, needs=frozenset({"reasoning"})),
]
RENDER_OPTIONS = ("date_string", "enable_thinking", "reasoning")  # the settings a factory template reads too


def supported(jinja: str) -> frozenset[str]:
    """The conversation kinds an official template handles, read from its text (for ``factory templates check``)."""
    kinds = {"system"}
    if "tools" in jinja:
        kinds.add("tools")
    if "tool_calls" in jinja:
        kinds |= {"tool_calls", "parallel_calls"}  # a template that refuses parallel calls is listed as refusing
    if "</think>" in jinja or "reasoning_content" in jinja:
        kinds.add("reasoning")
    return frozenset(kinds)


def modes(conversation: Conversation) -> Iterator[tuple[str, list[dict], bool]]:
    """``(mode, messages, add_generation_prompt)``: whole; before the final answer with a generation prompt; open."""
    yield "whole", conversation.messages, False
    messages = conversation.messages
    if messages and messages[-1]["role"] in RESPONSE_ROLES:
        yield "generation", messages[:-1], True
        yield "open", messages[:-1], False


def to_hf(
    messages: Sequence[Mapping],
    system: str,
    string_arguments: bool = False,
    reasoning_field: bool = False,
    call_ids: bool = True,
) -> list[dict]:
    """Standard-record messages in the form Hugging Face chat templates read.

    ``string_arguments``: call arguments as a JSON string, OpenAI's form, which some templates
    (DeepSeek's) concatenate as text instead of serializing. ``reasoning_field``: an answer's
    ``<think>`` span passed as ``reasoning_content``, for templates that read reasoning only there.
    ``call_ids=False``: calls without ids, for templates that number calls themselves (Kimi).
    """
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    ids: list[str] = []
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "function_call":
            calls = tool_calls(content, index)
            ids = [call.id for call in calls]
            out.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "type": "function",
                            **({"id": call.id} if call_ids else {}),
                            "function": {
                                "name": call.name,
                                "arguments": json.dumps(call.arguments, ensure_ascii=False)
                                if string_arguments
                                else call.arguments,
                            },
                        }
                        for call in calls
                    ],
                }
            )
        elif role == "observation":
            out.append(
                {"role": "tool", "content": content, **({"tool_call_id": ids.pop(0)} if ids and call_ids else {})}
            )
        elif role == "assistant" and reasoning_field and "</think>" in content:
            thought, answer, _ = split_reasoning(Reasoning(), content)
            out.append({"role": role, "content": answer, "reasoning_content": thought})
        else:
            out.append({"role": role, "content": content})
    return out


def render_official(
    jinja: str,
    messages: Sequence[Mapping],
    *,
    system: str = "",
    tools: str = "",
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    string_arguments: bool = False,
    reasoning_field: bool = False,
    call_ids: bool = True,
    **kwargs: Any,
) -> str:
    """The conversation rendered by ``jinja`` with transformers' renderer, as ``apply_chat_template`` does."""
    from transformers.utils.chat_template_utils import render_jinja_template

    specs = [wrapped(spec) for spec in parse_tools(tools)] if tools else None
    rendered, _ = render_jinja_template(
        conversations=[to_hf(messages, system, string_arguments, reasoning_field, call_ids)],
        tools=specs,
        chat_template=jinja,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **kwargs,
    )
    return rendered[0]


def first_difference(expected: str, actual: str, context: int = 40) -> str | None:
    """None when equal, else one line naming the first differing character with the text around it."""
    if expected == actual:
        return None
    at = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    start = max(0, at - context)
    return (
        f"first difference at character {at}: official {expected[start : at + context]!r} "
        f"vs factory {actual[start : at + context]!r}"
    )


@dataclass
class Result:
    conversation: str
    mode: str
    difference: str | None  # None: byte-exact
    error: str | None = None  # the official template refused the conversation


def check(
    template: Template,
    jinja: str,
    conversations: Sequence[Conversation],
    *,
    bos_token: str = "",
    eos_token: str = "",
    **kwargs: Any,
) -> list[Result]:
    """Each conversation in each mode rendered both ways.

    ``kwargs`` go to the official template (e.g. a family's own ``is_training`` switch); those in
    :data:`RENDER_OPTIONS` go to factory's template too.
    """
    tokenizer = SimpleNamespace(bos_token=bos_token, eos_token=eos_token)
    stop = fill(template.final_stop, {"bos_token": bos_token, "eos_token": eos_token})
    results = []
    for conversation in conversations:
        for mode, messages, generation in modes(conversation):
            try:
                official = render_official(
                    jinja,
                    messages,
                    system=conversation.system,
                    tools=conversation.tools,
                    add_generation_prompt=generation,
                    bos_token=bos_token,
                    eos_token=eos_token,
                    **kwargs,
                )
            except Exception as exc:  # the official template's raise_exception(): nothing to compare
                results.append(Result(conversation.name, mode, None, f"the official template refuses it ({exc})"))
                continue
            ours = template.render_text(
                messages,
                system=conversation.system,
                tools=conversation.tools,
                add_generation_prompt=generation,
                tokenizer=tokenizer,
                **{k: v for k, v in kwargs.items() if k in RENDER_OPTIONS},
            )
            if stop and mode == "whole" and ours == official + stop:
                ours = official  # the declared end token after the final answer
            results.append(Result(conversation.name, mode, first_difference(official, ours)))
    return results


def read_conversations(path: str | Path) -> list[Conversation]:
    """Conversations of a JSON or JSONL file in OpenAI's chat form ({"messages": [...], "tools": [...]})."""
    from factory.data.formats import OPENAI, BadRow, SkipRow
    from factory.data.resolve import DatasetSpec

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"cannot read --data {file} ({exc.strerror}); give a JSON or JSONL file of conversations"
        ) from None
    try:
        rows = (
            json.loads(text)
            if file.suffix == ".json"
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise DataError(
            f"--data {file} is not valid JSON{'L' if file.suffix != '.json' else ''} (line {exc.lineno}: "
            f"{exc.msg}); give OpenAI-style rows with a messages list"
        ) from None
    rows = rows if isinstance(rows, list) else [rows]
    spec = DatasetSpec(name=file.name, formatting="openai")
    out = []
    for number, row in enumerate(rows, 1):
        try:
            record = OPENAI.align(row, spec)
        except (BadRow, SkipRow) as exc:
            raise DataError(
                f"conversation {number} of {file} cannot be used ({exc}); give OpenAI-style messages "
                "that alternate user and assistant turns"
            ) from None
        out.append(Conversation(f"{file.name}#{number}", record["messages"], record["system"], record["tools"]))
    return out


def run_check(
    name: str,
    *,
    jinja: str | None = None,
    model: str | None = None,
    data: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    date_string: str | None = None,
    enable_thinking: bool | None = None,
    manager: Any = None,
) -> int:
    """``factory templates check``: print each rendering's verdict; 0 when all are byte-exact, 1 otherwise."""
    from factory.data.template_auto import get_template
    from factory.errors import ConfigError
    from factory.plugins import get_manager

    if not jinja and not model:
        raise ConfigError("factory templates check needs the official template: --jinja FILE or --model DIR")
    tokenizer = None
    if model:
        folder = Path(model)
        if not (folder / "tokenizer_config.json").is_file():
            raise ConfigError(
                f"--model {model} is not a folder with a tokenizer_config.json; give a downloaded "
                "Hugging Face model folder"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    if jinja:
        try:
            text = Path(jinja).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read --jinja {jinja} ({exc.strerror}); give the official chat template file"
            ) from None
        source = jinja
    else:
        text = getattr(tokenizer, "chat_template", None) or ""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"the tokenizer in {model} has no chat_template to compare with; pass --jinja FILE")
        source = f"{model}'s chat_template"
    bos = bos_token if bos_token is not None else getattr(tokenizer, "bos_token", None) or ""
    eos = eos_token if eos_token is not None else getattr(tokenizer, "eos_token", None) or ""
    template = get_template(name, None, manager or get_manager())
    if not isinstance(template, Template):
        raise ConfigError(f"template '{name}' is not a data template that can be checked; name a packaged one")
    kinds = supported(text)
    conversations = read_conversations(data) if data else [s for s in SAMPLES if s.needs <= kinds]
    kwargs: dict[str, Any] = {
        k: v for k, v in (("date_string", date_string), ("enable_thinking", enable_thinking)) if v is not None
    }
    results = check(template, text, conversations, bos_token=bos, eos_token=eos, **kwargs)
    print(f"factory: template {template.name} vs {source}")
    width = max((len(r.conversation) for r in results), default=0)
    for r in results:
        verdict = "byte-exact" if r.difference is None and r.error is None else (r.difference or f"skipped: {r.error}")
        print(f"  {r.conversation:<{width}}  {r.mode:<10}  {verdict}")
    differing = sum(r.difference is not None for r in results)
    exact = sum(r.difference is None and r.error is None for r in results)
    print(
        f"factory: {exact} byte-exact, {differing} differing, {len(results) - exact - differing} refused by the "
        "official template"
    )
    return 1 if differing else 0
