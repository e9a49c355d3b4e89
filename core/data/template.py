"""Chat templates: the text a model sees for a conversation, and which of it is trained.

A :class:`Template` is data: one format string per turn kind with ``{{content}}``-style
placeholders, normally one entry of a YAML file in ``templates/`` (see ``docs/templates.md``).
:class:`JinjaTemplate` instead renders with the tokenizer's own Jinja ``chat_template`` and finds
the trained spans by rendering growing prefixes of the conversation. Both return
:class:`Segment` lists; tokenization (``factory.data.processing``) turns them into ids and labels.

This module imports neither torch nor transformers: the built-in template plugin imports it at
registration time, and a Jinja template only calls methods of the tokenizer it is given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from factory.data.record import PROMPT_ROLES, RESPONSE_ROLES
from factory.errors import DataError, FactoryError, PluginError, did_you_mean, one_of

AUTO = "auto"
DEFAULT = "default"

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_CONTENT = "{{content}}"
_EOS = "{{eos_token}}"
_TURN = ("content", "bos_token", "eos_token")
# field -> (placeholders it may use, the one it must use exactly once)
_PLACEHOLDERS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "prefix": (("bos_token", "eos_token"), None),
    "system": (_TURN, "content"),
    "user": (_TURN, "content"),
    "assistant": (_TURN, "content"),
    "function_call": (_TURN, "content"),
    "observation": (_TURN, "content"),
    "tool_call": (("name", "arguments"), "name"),
    "tool_calls": (("calls",), "calls"),
    "tools": (("tools",), "tools"),
    "tool_definition": (("tool", "tool_name"), "tool"),
}

GENERIC_TOOLS = (
    "\n\nYou can use the following tools:\n{{tools}}\n\n"
    'To call tools, reply with only a JSON object {"name": <tool name>, "arguments": <arguments object>}, '
    "or a JSON list of such objects to call several."
)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``trainable`` marks response text the loss is computed on."""

    text: str
    trainable: bool


# -- tool definitions and calls ----------------------------------------------------------------


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
                f"the tool definitions {_short(tools)} are not valid JSON ({exc.msg}); write them as a JSON list of "
                "function specs with name, description and parameters"
            ) from None
    specs = [tools] if isinstance(tools, Mapping) else list(tools)
    out = []
    for spec in specs:
        if isinstance(spec, Mapping) and isinstance(spec.get("function"), Mapping):
            spec = spec["function"]
        if not isinstance(spec, Mapping):
            raise DataError(f"the tool definition {_short(json.dumps(spec))} is not a JSON object; give each tool as one")
        out.append(dict(spec))
    return out


def parse_tool_calls(content: str, index: int = 0) -> list[tuple[str, Any]]:
    """The ``(name, arguments)`` pairs of a function_call turn, whose content is the call(s) as JSON."""
    where = f"the function_call in message {index + 1}"
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        raise DataError(
            f"{where} is not JSON: {_short(content)}; write it as "
            '{"name": ..., "arguments": {...}} or a list of such objects'
        ) from None
    calls = []
    for call in data if isinstance(data, list) else [data]:
        if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
            call = call["function"]
        name = call.get("name") if isinstance(call, Mapping) else None
        if not isinstance(name, str) or not name:
            raise DataError(f'{where} has no "name": {_short(content)}; give each call a name and its arguments')
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append((name, arguments))
    return calls


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- rendering helpers -------------------------------------------------------------------------


def _fill(fmt: str, values: Mapping[str, str]) -> str:
    # One regex pass: text put in (message content) is never scanned for placeholders again.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], fmt)


def _split_response(head: str, response: str) -> tuple[str, str, str]:
    """``(prompt, trained, untrained tail)`` of a response turn rendered as ``head + response``.

    Spaces ending the head move into the trained text (tokenizers glue a leading space to the
    next word, so the span boundary stays on a token boundary and the generation prompt ends
    before the space), and whitespace after the end-of-turn marker is not trained (generation
    stops at the marker, so the model never produces it).
    """
    kept = head.rstrip(" ")
    body = response.rstrip()
    return kept, head[len(kept):] + body, response[len(body):]


def _take_system(messages: Sequence[Mapping], system: str) -> tuple[Sequence[Mapping], str]:
    """Accept a leading ``{"role": "system"}`` message as the system prompt (OpenAI style)."""
    if messages and messages[0].get("role") == "system":
        return messages[1:], system or str(messages[0].get("content") or "")
    return messages, system


def _role_content(message: Mapping, index: int) -> tuple[str, str]:
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


class _Segments:
    """Collects segments: prompt text is merged, each response turn stays one trained segment."""

    def __init__(self) -> None:
        self.items: list[Segment] = []

    def prompt(self, text: str) -> None:
        if not text:
            return
        if self.items and not self.items[-1].trainable:
            text = self.items.pop().text + text
        self.items.append(Segment(text, False))

    def response(self, head: str, response: str) -> None:
        head, body, tail = _split_response(head, response)
        self.prompt(head)
        if body:
            self.items.append(Segment(body, True))
        self.prompt(tail)


# -- the data template -------------------------------------------------------------------------


def _explain(exc: ValidationError) -> str:
    """One readable clause for the first problem pydantic found."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"key '{key}' is not a template field{did_you_mean(key, Template.model_fields)}"
    if error["type"] == "missing":
        return f"key '{key}' is missing"
    if not key and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return f"key '{key}': {error['msg']}"


class InvalidTemplate(PluginError):
    """A template whose fields do not validate; ``reason`` says which key and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"template {name!r} is invalid: {reason}")
        self.reason = reason


class Template(BaseModel):
    """A chat template as data.

    Turn formats hold ``{{content}}``; ``{{bos_token}}``/``{{eos_token}}`` are filled from the
    tokenizer. In a response format (assistant, function_call) the text before ``{{content}}``
    is the prompt header (also what ``add_generation_prompt`` appends), and ``{{content}}`` with
    the end-of-turn marker after it is trained. See ``docs/templates.md`` for every field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str
    description: str = ""
    model_types: list[str] = []  # config ``model_type`` values this template is the default for (auto)
    prefix: str = ""  # once, before everything
    system: str
    system_in_user: bool = False  # the rendered system goes in front of the first user message
    default_system: str
    user: str
    assistant: str
    function_call: str | None = None  # default: the assistant format
    observation: str | None = None  # default: the user format
    tool_call: str = '{"name": "{{name}}", "arguments": {{arguments}}}'  # one call
    tool_call_separator: str = "\n"
    tool_calls: str = "{{calls}}"  # wraps the joined calls
    tools: str = GENERIC_TOOLS  # appended to the system text when tools are given
    tool_definition: str = "{{tool}}"  # one tool; {{tool}} is its JSON spec
    tool_definition_separator: str = "\n"
    stop_words: list[str]
    eos_ends_turn: bool  # the tokenizer's eos is the end-of-turn marker of a response

    _tokenizer: Any = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidTemplate(str(data.get("name", "?")), _explain(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> Template:
        for field, (allowed, required) in _PLACEHOLDERS.items():
            fmt = getattr(self, field)
            if fmt is None:
                continue
            found = _PLACEHOLDER.findall(fmt)
            unknown = [name for name in found if name not in allowed]
            if unknown:
                raise ValueError(
                    f"key '{field}' uses the placeholder {{{{{unknown[0]}}}}}; it may use "
                    + ", ".join(f"{{{{{name}}}}}" for name in allowed)
                )
            if required and found.count(required) != 1:
                raise ValueError(f"key '{field}' must contain {{{{{required}}}}} exactly once")
        after = self.assistant.partition(_CONTENT)[2]
        if self.eos_ends_turn != (_EOS in after):
            raise ValueError(
                "key 'eos_ends_turn' is "
                + ("true but the assistant format has no {{eos_token}} after {{content}}" if self.eos_ends_turn
                   else "false but the assistant format ends its turn with {{eos_token}}")
            )
        if any(not isinstance(word, str) or not word for word in self.stop_words):
            raise ValueError("key 'stop_words' must hold non-empty strings")
        return self

    # -- public API ----------------------------------------------------------------------------

    def bind(self, tokenizer: Any) -> Template:
        """A copy that fills ``{{bos_token}}``/``{{eos_token}}`` from ``tokenizer`` when render gets none."""
        bound = self.model_copy()
        bound._tokenizer = tokenizer
        return bound

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        system: str = "",
        tools: str | Sequence = "",
        add_generation_prompt: bool = False,
        tokenizer: Any = None,
    ) -> list[Segment]:
        """The conversation as segments: prompt text, then one trained segment per response turn.

        ``system`` falls back to :attr:`default_system`; ``tools`` (JSON tool definitions) go
        into the system text in this family's format; a function_call message holds its call(s)
        as JSON and is rendered in the family's tool-call syntax.
        """
        specials = self._specials(tokenizer)
        messages, system = _take_system(messages, system)
        out = _Segments()
        out.prompt(_fill(self.prefix, specials))
        system_text = self._system_text(system or self.default_system, tools)
        pending = _fill(self.system, {**specials, "content": system_text}) if system_text else ""
        if pending and not self.system_in_user:
            out.prompt(pending)
            pending = ""
        for index, message in enumerate(messages):
            role, content = _role_content(message, index)
            if role in PROMPT_ROLES:
                fmt = self.user if role == "user" else self.observation or self.user
                out.prompt(_fill(fmt, {**specials, "content": pending + content}))
                pending = ""
                continue
            out.prompt(pending)
            pending = ""
            fmt = self.assistant
            if role == "function_call":
                fmt, content = self.function_call or self.assistant, self._calls_text(content, index)
            head, _, tail = fmt.partition(_CONTENT)
            out.response(_fill(head, specials), content + _fill(tail, specials))
        out.prompt(pending)
        if add_generation_prompt:
            out.prompt(_split_response(_fill(self.assistant.partition(_CONTENT)[0], specials), "")[0])
        return out.items

    def render_text(self, messages: Sequence[Mapping], **kwargs: Any) -> str:
        """The rendered conversation as one string (the segments joined)."""
        return "".join(segment.text for segment in self.render(messages, **kwargs))

    # -- internals -----------------------------------------------------------------------------

    def _formats(self) -> list[str]:
        return [fmt for fmt in (self.prefix, self.system, self.user, self.assistant, self.function_call,
                                self.observation) if fmt]

    def _specials(self, tokenizer: Any) -> dict[str, str]:
        tokenizer = tokenizer if tokenizer is not None else self._tokenizer
        used = {name for fmt in self._formats() for name in _PLACEHOLDER.findall(fmt)}
        if tokenizer is None:
            if used & {"bos_token", "eos_token"}:
                raise PluginError(
                    f"template '{self.name}' fills {{{{bos_token}}}}/{{{{eos_token}}}} from the tokenizer; "
                    "pass tokenizer= to render or get the template with get_template(name, tokenizer, manager)"
                )
            return {"bos_token": "", "eos_token": ""}
        eos = getattr(tokenizer, "eos_token", None) or ""
        if not eos and "eos_token" in used:
            raise PluginError(
                f"template '{self.name}' ends turns with the tokenizer's eos token, but this tokenizer has none; "
                "set tokenizer.eos_token or choose another template"
            )
        return {"bos_token": getattr(tokenizer, "bos_token", None) or "", "eos_token": eos}

    def _system_text(self, system: str, tools: str | Sequence) -> str:
        if not tools:
            return system
        definitions = [
            _fill(self.tool_definition, {"tool": _json(spec), "tool_name": str(spec.get("name", ""))})
            for spec in parse_tools(tools)
        ]
        block = _fill(self.tools, {"tools": self.tool_definition_separator.join(definitions)})
        return system + block if system else block.lstrip()

    def _calls_text(self, content: str, index: int) -> str:
        calls = [
            _fill(self.tool_call, {"name": name, "arguments": _json(arguments)})
            for name, arguments in parse_tool_calls(content, index)
        ]
        return _fill(self.tool_calls, {"calls": self.tool_call_separator.join(calls)})


# -- the tokenizer's own Jinja template ----------------------------------------------------------


class JinjaTemplate(Template):
    """The tokenizer's Jinja ``chat_template``, so rendering is byte-exact with ``apply_chat_template``.

    Jinja templates do not say which text is the response, so the spans are found by rendering
    prefixes: the text up to a response turn rendered with ``add_generation_prompt=True`` is the
    prompt, and what rendering the turn itself adds is trained. That needs every rendering to
    extend the previous one; a template that rewrites earlier turns (e.g. one that drops past
    reasoning) is refused with the advice to use a named template.
    """

    _suggestion: str = PrivateAttr(default="")
    _hf_tools: bool = PrivateAttr(default=False)
    _hf_calls: bool = PrivateAttr(default=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, suggestion: str = "") -> JinjaTemplate:
        """The template of ``tokenizer``; ``suggestion`` is the named template errors recommend."""
        source = tokenizer.chat_template
        text = source if isinstance(source, str) else " ".join(map(str, dict(source).values()))
        template = cls(
            name=AUTO,
            description=f"the tokenizer's own chat template ({getattr(tokenizer, 'name_or_path', '') or 'in memory'})",
            system=_CONTENT,
            default_system="",  # the Jinja template inserts its own default when no system is given
            user=_CONTENT,
            assistant=_CONTENT,
            stop_words=[],
            eos_ends_turn=False,
        )
        template._tokenizer = tokenizer
        template._suggestion = suggestion
        template._hf_tools = "tools" in text
        template._hf_calls = "tool_calls" in text
        # Probe with a small conversation: an inconsistent template is refused now rather than at
        # the first data row, and the end-of-turn marker gives stop_words and eos_ends_turn.
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}] * 2
        trained = [segment.text for segment in template.render(probe) if segment.trainable]
        try:
            template.render(probe, system="Be brief.")
        except DataError:  # the template refuses system prompts (Gemma 2): only such records will fail
            pass
        marker = trained[0].partition("Hello")[2].strip() if trained else ""
        eos = getattr(tokenizer, "eos_token", None) or ""
        return template.model_copy(
            update={
                "stop_words": [marker] if marker and marker != eos else [],
                "eos_ends_turn": bool(eos) and eos in marker,
                "assistant": _CONTENT + (marker.replace(eos, _EOS) if eos else marker),
            }
        )

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        system: str = "",
        tools: str | Sequence = "",
        add_generation_prompt: bool = False,
        tokenizer: Any = None,
    ) -> list[Segment]:
        """Segments whose joined text equals ``tokenizer.apply_chat_template(..., tokenize=False)``.

        ``tokenizer`` is accepted for the common signature; the bound tokenizer's template is used.
        """
        messages, system = _take_system(messages, system)
        specs = parse_tools(tools) if tools else []
        kwargs = {"tools": [{"type": "function", "function": spec} for spec in specs]} if specs and self._hf_tools else {}
        if specs and not self._hf_tools:  # the Jinja has no place for tools: describe them in the system text
            system = self._system_text(system, specs)
        hf = [{"role": "system", "content": system}] if system else []
        hf += [self._hf_message(message, index) for index, message in enumerate(messages)]
        offset = len(hf) - len(messages)
        out = _Segments()
        done = ""
        ends_with_response = False
        for index, message in enumerate(messages):
            ends_with_response = message["role"] in RESPONSE_ROLES
            if not ends_with_response:
                continue
            turn = offset + index
            prompt = self._extend(done, self._apply(hf[:turn], True, kwargs), turn)
            full = self._extend(prompt, self._apply(hf[: turn + 1], False, kwargs), turn + 1)
            out.response(prompt[len(done):], full[len(prompt):])
            done = full
        if add_generation_prompt or not ends_with_response:
            out.prompt(self._extend(done, self._apply(hf, add_generation_prompt, kwargs), len(hf))[len(done):])
        return out.items

    def _hf_message(self, message: Mapping, index: int) -> dict:
        """A standard-record message in the shape Hugging Face chat templates expect."""
        role, content = _role_content(message, index)
        if role == "observation":
            return {"role": "tool", "content": content}
        if role == "function_call":
            calls = [{"type": "function", "function": {"name": name, "arguments": arguments}}
                     for name, arguments in parse_tool_calls(content, index)]
            if not self._hf_calls:  # the Jinja knows no tool calls: the call's JSON is the answer
                return {"role": "assistant", "content": content}
            return {"role": "assistant", "content": "", "tool_calls": calls}
        return {"role": role, "content": content}

    def _apply(self, messages: list[dict], add_generation_prompt: bool, kwargs: dict) -> str:
        try:
            return self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except Exception as exc:  # the template's own raise_exception() or a Jinja error
            raise DataError(
                f"the tokenizer's chat template cannot render this conversation ({exc}); fix the data or set "
                f"template: {self._suggestion or 'NAME'} to use a named template"
            ) from None

    def _extend(self, done: str, text: str, count: int) -> str:
        if not text.startswith(done):
            raise PluginError(
                f"{self.description} is not prefix-consistent: rendering {count} messages changes the text of the earlier ones, so the "
                f"trained spans cannot be found; set template: {self._suggestion or 'NAME'} to use a named "
                "template instead of auto"
            )
        return text


# -- YAML files --------------------------------------------------------------------------------

Source = str | os.PathLike | Traversable


def _yaml_files(source: Source) -> list[Traversable]:
    root = Path(source) if isinstance(source, str | os.PathLike) else source
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PluginError(f"template source {root} is neither a YAML file nor a folder; check the path")
    return sorted((f for f in root.iterdir() if f.name.endswith((".yaml", ".yml"))), key=lambda f: f.name)


def _read_yaml(file: Traversable) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PluginError(f"{file} is not valid YAML{line} ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PluginError(f"{file} must map template names to their fields, but holds a {type(data).__name__}")
    return data


class TemplateLibrary:
    """The templates of a YAML file or a folder of them, each built (and validated) on first use.

    Reading the files only lists names and descriptions, which keeps plugin registration fast.
    Templates are attributes (``library.chatml``), so a plugin registers them as lazily
    imported ``"module:LIBRARY.name"`` strings with :meth:`register_all`.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._entries: dict[str, tuple[str, dict]] | None = None
        self._built: dict[str, Template] = {}

    def entries(self) -> dict[str, tuple[str, dict]]:
        """Template name -> (file it is defined in, its raw fields)."""
        if self._entries is None:
            entries: dict[str, tuple[str, dict]] = {}
            for file in _yaml_files(self._source):
                for name, raw in _read_yaml(file).items():
                    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", name):
                        raise PluginError(
                            f"{file} defines a template named {name!r}; use lower-case letters, digits, '-' or '_'"
                        )
                    if not isinstance(raw, dict):
                        raise PluginError(f"template '{name}' in {file} must be a mapping of fields, not {raw!r}")
                    if name in entries:
                        raise PluginError(
                            f"template '{name}' is defined in both {entries[name][0]} and {file}; rename one"
                        )
                    entries[name] = (str(file), raw)
            self._entries = entries
        return self._entries

    def names(self) -> list[str]:
        return sorted(self.entries())

    def get(self, name: str) -> Template:
        """The template ``name``, validated; a PluginError naming the file and key when it is malformed."""
        if name not in self._built:
            entries = self.entries()
            if name not in entries:
                raise PluginError(f"unknown template '{name}'{did_you_mean(name, entries)} (defined: {one_of(entries)})")
            where, raw = entries[name]
            try:
                self._built[name] = Template(**{**raw, "name": name})
            except InvalidTemplate as exc:
                raise PluginError(f"template '{name}' in {where} is invalid: {exc.reason}") from None
        return self._built[name]

    def __getattr__(self, name: str) -> Template:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except PluginError as exc:
            if name in self.entries():
                raise
            raise AttributeError(str(exc)) from None

    def register_all(self, register: Callable[..., Any], attribute: str) -> None:
        """Register every template with ``register``; ``attribute`` is where this library lives,
        as ``"module:NAME"``, so each template is imported and built only when a run uses it."""
        for name, (_, raw) in self.entries().items():
            register(name, f"{attribute}.{name}", description=str(raw.get("description", "")))


PACKAGED = TemplateLibrary(files("factory.chat_templates"))
"""The templates shipped with factory (``templates/*.yaml``, package data of ``factory.chat_templates``)."""


# -- choosing a template -----------------------------------------------------------------------


def get_template(name: str, tokenizer: Any, manager: Any) -> Template:
    """The chat template for ``template: name``, bound to ``tokenizer``.

    ``auto`` uses the tokenizer's own Jinja template when it has one, else the template declared
    for the model's type (``model_types``), else ``default``. Any other name comes from the
    plugin registry; an unknown one is a PluginError listing those available.
    """
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
    if getattr(tokenizer, "chat_template", None):
        return JinjaTemplate.from_tokenizer(tokenizer, suggestion=by_type or "")
    return get_template(by_type or DEFAULT, tokenizer, manager)


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
    matches = []
    for impl in manager.implementations("templates"):
        if impl.unavailable_reason():
            continue
        try:
            template = impl.load()
        except FactoryError:
            continue
        if model_type in (getattr(template, "model_types", None) or ()):
            matches.append(impl)
    preferred = [impl for impl in matches if impl.distribution != "factory-core"] or matches
    if len(preferred) > 1:
        raise PluginError(
            f"model type '{model_type}' is claimed by the templates {one_of(i.name for i in preferred)}; "
            "set template: NAME to choose one"
        )
    return preferred[0].name if preferred else None
