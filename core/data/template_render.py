"""Rendering a :class:`~factory.data.template_format.Template`: a conversation -> text segments.

The renderer follows the order every family's Jinja template follows (prefix, system text, turns,
generation prompt or closing text) and applies the template's declared options at the places
those templates apply them. Which text is trained is decided here, turn by turn: a response's
header is prompt, its content and end-of-turn marker are trained, and when a family's
generation prompt goes further than the header (an opened or empty reasoning block) that text
is prompt too, because the model is given it at inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from factory.data.record import PROMPT_ROLES, RESPONSE_ROLES
from factory.data.template_text import CONTENT, Segment, fill
from factory.data.template_tools import ToolCall, parse_tools, to_json, tool_calls, wrapped
from factory.errors import ConfigError, DataError, one_of

if TYPE_CHECKING:
    from factory.data.template_format import Reasoning, Template

REASONING_MODES = ("train", "keep", "drop")


def take_system(messages: Sequence[Mapping], system: str) -> tuple[Sequence[Mapping], str]:
    """Accept a leading ``{"role": "system"}`` message as the system prompt (OpenAI style)."""
    if messages and messages[0].get("role") == "system":
        return messages[1:], system or str(messages[0].get("content") or "")
    return messages, system


def role_content(message: Mapping, index: int) -> tuple[str, str]:
    role, content = message.get("role"), message.get("content")
    if role not in PROMPT_ROLES + RESPONSE_ROLES:
        raise DataError(
            f"message {index + 1} has role {role!r}; use one of {one_of(PROMPT_ROLES + RESPONSE_ROLES)} "
            "(a system prompt goes in the record's system field)"
        )
    if content is None:
        return role, ""
    if not isinstance(content, str):
        raise DataError(f"message {index + 1} ({role}) has content of type {type(content).__name__}; it must be text")
    return role, content


class Segments:
    """Collects segments: prompt text is merged, each response turn stays one trained segment."""

    def __init__(self) -> None:
        self.items: list[Segment] = []

    def prompt(self, text: str) -> None:
        if not text:
            return
        if self.items and not self.items[-1].trainable:
            text = self.items.pop().text + text
        self.items.append(Segment(text, False))

    def response(self, head: str, body: list[tuple[str, bool]], tail: str, generation_prompt: str) -> None:
        """A response turn: ``head`` + ``body`` pieces (text, trained?) + ``tail`` (its end marker).

        Spaces ending the head move into the trained text (tokenizers glue a leading space to the
        next word, so the span boundary stays on a token boundary and the generation prompt ends
        before the space); text the generation prompt already gives is not trained; whitespace
        after the end-of-turn marker is not trained (generation stops at the marker).
        """
        pieces = [(head, True), *body, (tail, True)]
        text = "".join(piece for piece, _ in pieces)
        start = len(head.rstrip(" "))
        if len(generation_prompt) > start and text.startswith(generation_prompt):
            start = len(generation_prompt)
        end = len(text.rstrip())
        position, trained = 0, ""
        for piece, flag in pieces:
            for offset, char in enumerate(piece):
                at = position + offset
                if at < start or at >= end or not flag:
                    if trained:
                        self.items.append(Segment(trained, True))
                        trained = ""
                    self.prompt(char)
                else:
                    trained += char
            position += len(piece)
        if trained:
            self.items.append(Segment(trained, True))


def check_mode(mode: str) -> str:
    if mode not in REASONING_MODES:
        raise ConfigError(f"reasoning: {mode!r} is not a reasoning mode; use one of {one_of(REASONING_MODES)}")
    return mode


def render(
    template: Template,
    messages: Sequence[Mapping],
    *,
    system: str,
    tools: str | Sequence,
    add_generation_prompt: bool,
    specials: dict[str, str],
    date_string: str | None = None,
    enable_thinking: bool | None = None,
    reasoning: str = "train",
) -> list[Segment]:
    """The segments of a conversation, in the order every family's template writes them.

    Prefix, tools and system turn (where the template puts them), then each message: prompt turns
    (user, observation) are context; a response turn (assistant, function_call) is its header as
    context and its body (reasoning block, answer or calls) and end marker as trained text. Last
    the generation prompt, or the template's closing text.
    """
    t = template
    mode = check_mode(reasoning)
    messages, system = take_system(messages, system)
    turns = [role_content(message, index) for index, message in enumerate(messages)]
    specs = parse_tools(tools) if tools else []
    date = date_string or t.default_date or datetime.now().strftime(t.date_format)

    out = Segments()
    out.prompt(fill(t.prefix, {**specials, "date": date}))
    tools_block = _tools_text(t, specs) if specs else ""
    if tools_block and t.tools_in == "before_system":
        out.prompt(tools_block)
    system_turn = _system_turn(t, system, specs, tools_block, date, specials)
    if system_turn and t.system_in_user is False:
        out.prompt(system_turn)
        system_turn = ""
    if tools_block and t.tools_in == "after_system":
        out.prompt(tools_block)

    users = [index for index, (role, _) in enumerate(turns) if role == "user"]
    first_user, last_user = (users[0], users[-1]) if users else (-1, -1)
    kept_after = last_user  # past answers after this message keep their reasoning (where the family keeps any)
    if t.reasoning is not None and t.reasoning.kept == "after_first_answer":
        kept_after = next((index for index, (role, _) in enumerate(turns) if role == "assistant"), len(turns))
    final = len(turns) - 1 if turns and turns[-1][0] in RESPONSE_ROLES else -1
    prompt_for_answer = generation_prompt(
        t, specials, t.enable_thinking if enable_thinking is None else enable_thinking
    )
    pending: list[tuple[int, ToolCall]] = []  # the calls whose results come next, numbered in the conversation
    numbered = 0
    for index, (role, content) in enumerate(turns):
        if role in PROMPT_ROLES:
            trim = role in t.trim
            if trim and not t.trim_after_system:
                content = content.strip()
            if role == "user" and index == first_user and tools_block and t.tools_in == "first_user":
                content = tools_block + content.strip()  # Llama 3.1 and 4 strip the message they put tools in
            if role == "user" and index == last_user and tools_block and t.tools_in == "before_last_user":
                out.prompt(tools_block)
            if system_turn and (t.system_in_user is True or (role == "user" and index == len(turns) - 1)):
                content = system_turn + content
                system_turn = ""
            if trim and t.trim_after_system:
                content = content.strip()
            if role == "user":
                out.prompt(fill(t.user, {**specials, "content": content}))
            else:
                number, call = pending.pop(0) if pending else (0, None)
                values = {
                    **specials,
                    "content": content,
                    "content_json": to_json(content),
                    "call_id": call.id if call else "",
                    "call_name": call.name if call else "",
                    "call_number": str(number),
                }
                opening, _, closing = t.observations.partition("{{results}}")
                first = index == 0 or turns[index - 1][0] != "observation"
                last = index == len(turns) - 1 or turns[index + 1][0] != "observation"
                out.prompt(
                    (opening if first else "") + fill(t.observation or t.user, values) + (closing if last else "")
                )
            continue
        if t.system_in_user is True:
            out.prompt(system_turn)
            system_turn = ""
        after_result = index > 0 and turns[index - 1][0] == "observation" and t.assistant_after_observation is not None
        if role == "function_call":
            calls = tool_calls(content, index)
            pending = list(enumerate(calls, numbered))
            numbered += len(calls)
            fmt = t.assistant_after_observation if after_result else t.function_call or t.assistant
            body = _answer(t.reasoning, "", index, final, kept_after, mode)[:-1] + [(_calls_text(t, pending), True)]
        else:
            if "assistant" in t.trim:
                content = content.strip()
            fmt = t.assistant_after_observation if after_result else t.assistant
            body = _answer(t.reasoning, content, index, final, kept_after, mode)
        head, _, tail = fmt.partition(CONTENT)
        if index == final and role == "assistant" and t.final_end is not None:
            tail = t.final_end
        tail = fill(tail, specials) + (fill(t.final_stop, specials) if index == final else "")
        head = fill(head, specials)
        if t.reasoning is not None and t.reasoning.before_header and len(body) > 1:  # the block opens the turn
            head, body = "", [body[0], (head, True), *body[1:]]
        out.response(head, body, tail, prompt_for_answer)
    if system_turn and t.system_in_user is True:
        out.prompt(system_turn)
    if add_generation_prompt and turns and turns[-1][0] == "observation" and t.assistant_after_observation is not None:
        out.prompt(fill(t.assistant_after_observation.partition(CONTENT)[0], specials).rstrip(" "))
    elif add_generation_prompt:
        out.prompt(prompt_for_answer)
    else:
        out.prompt(fill(t.end, specials))
    return out.items


def generation_prompt(template: Template, specials: dict[str, str], enable_thinking: bool | None) -> str:
    """What ``add_generation_prompt`` appends: the assistant header, or the family's own text."""
    if template.generation_prompt is not None:
        text = fill(template.generation_prompt, specials)
    else:
        text = fill(template.assistant.partition(CONTENT)[0], specials).rstrip(" ")
    return text + (template.no_thinking_prompt if enable_thinking is False else "")


# -- pieces ------------------------------------------------------------------------------------


def _system_turn(
    t: Template, system: str, specs: list[dict], tools_block: str, date: str, specials: dict[str, str]
) -> str:
    if system:
        text = system
    else:
        default = t.default_system_tools if specs and t.default_system_tools is not None else t.default_system
        text = fill(default, {"date": date})
    if "system" in t.trim:
        text = text.strip()
    if tools_block and t.tools_in == "system" and t.tools_first:
        text = tools_block + ((t.tools_system_separator or "") if text else "") + text
    elif tools_block and t.tools_in == "system":
        if t.tools_system_separator is None:
            text = text + tools_block if text else tools_block.lstrip()
        else:
            text = (text + t.tools_system_separator if text else "") + tools_block
    header = fill(t.system_header, {"date": date})
    text = (
        (t.tools_note if specs and (header or text) else "") + header + text
    )  # the note opens a system turn, never makes one
    return fill(t.system, {**specials, "content": text}) if text or t.system_always else ""


def _tools_text(t: Template, specs: list[dict]) -> str:
    items = [wrapped(spec) if t.tool_wrap else spec for spec in specs]
    definitions = [
        fill(t.tool_definition, {"tool": to_json(item, t.tool_indent), "tool_name": str(spec.get("name", ""))})
        for item, spec in zip(items, specs)
    ]
    return fill(
        t.tools, {"tools": t.tool_definition_separator.join(definitions), "tools_json": to_json(items, t.tool_indent)}
    )


def _calls_text(t: Template, calls: list[tuple[int, ToolCall]]) -> str:
    written = [
        fill(
            t.tool_call,
            {"name": c.name, "arguments": _arguments_text(t, c.arguments), "id": c.id, "number": str(number)},
        )
        for number, c in calls
    ]
    return fill(t.tool_calls, {"calls": t.tool_call_separator.join(written)})


def _arguments_text(t: Template, arguments: Any) -> str:
    """The arguments as JSON, or one ``tool_call_argument`` per key."""
    if t.tool_call_argument is None or not isinstance(arguments, Mapping):
        return to_json(arguments)
    return "".join(
        fill(t.tool_call_argument, {"key": str(key), "value": _argument_value(t, value)})
        for key, value in arguments.items()
    )


def _argument_value(t: Template, value: Any) -> str:
    """One argument's value as the family writes it: text as it is, other values as JSON or Python's ``str()``."""
    if isinstance(value, str):
        return value
    if t.tool_call_argument_value == "str" or (
        t.tool_call_argument_value == "str_scalars" and not isinstance(value, (list, dict))
    ):
        return str(value)
    return to_json(value)


def split_reasoning(reasoning: Reasoning, content: str) -> tuple[str, str, int]:
    """``(reasoning, answer, where the answer starts)`` of a message whose content may hold a reasoning span.

    The split is the one the families' templates make: the reasoning is what comes before the
    first closing tag (after the last opening tag), the answer what follows the last one.
    """
    opening, closing = reasoning.tags
    if closing not in content:
        if reasoning.strip_whitespace:
            answer = content.strip()
        elif reasoning.split_always and reasoning.lstrip_answer:
            answer = content.lstrip("\n")
        else:
            answer = content
        return "", answer, content.find(answer) if answer else len(content)
    before = content.split(closing)[0]
    after = content.split(closing)[-1]
    thought = before.rstrip("\n").split(opening)[-1].lstrip("\n").strip("\n")
    if reasoning.strip_whitespace:
        return thought.strip(), after.strip(), len(content) - len(after.lstrip())
    answer = after.lstrip("\n") if reasoning.lstrip_answer else after
    return thought, answer, len(content) - len(answer)


def _answer(
    reasoning: Reasoning | None, content: str, index: int, final: int, kept_after: int, mode: str
) -> list[tuple[str, bool]]:
    """An assistant message's body: its reasoning block where the family writes one, then the answer."""
    if reasoning is None:
        return [(content, True)]
    thought, answer, start = split_reasoning(reasoning, content)
    if index == final:
        if reasoning.kept == "last" and mode != "drop":  # the final message exactly as given
            return [(content[:start], mode != "keep"), (content[start:], True)]
        if mode == "drop":
            thought = ""
        shown = bool(thought) or reasoning.final_always or reasoning.always
    else:
        if not (
            reasoning.kept == "all"
            or reasoning.kept in ("after_last_query", "after_first_answer")
            and index > kept_after
        ):
            thought = ""
        shown = bool(thought) or reasoning.always
    if not shown:
        return [(answer, True)]
    answer = answer.lstrip("\n") if reasoning.lstrip_after_block and not reasoning.strip_whitespace else answer
    answer = reasoning.answer_prefix + answer if answer else answer
    return [(fill(reasoning.format, {"reasoning": thought}), mode != "keep"), (answer, True)]


def describe_tools(template: Template, system: str, specs: Any) -> str:
    """``system`` with the tool definitions appended in ``template``'s generic form (for a Jinja without tools)."""
    block = _tools_text(template, parse_tools(specs)) if specs else ""
    return system + block if system else block.lstrip()
