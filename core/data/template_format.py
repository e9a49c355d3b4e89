"""The chat template as data: its fields, their placeholders and their validation.

A :class:`Template` holds one format string per turn kind with ``{{content}}``-style
placeholders plus a few declared options (trimming, where the system prompt and the tool
definitions go, a dated system header, reasoning blocks), normally one entry of a YAML file in
``templates/`` (see ``docs/templates.md``). Rendering lives in :mod:`factory.data.template_render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from factory.data.template_render import render
from factory.data.template_text import CONTENT, PLACEHOLDER, Segment
from factory.errors import PluginError, did_you_mean

AUTO = "auto"
DEFAULT = "default"

EOS = "{{eos_token}}"
_SPECIALS = ("bos_token", "eos_token")
_TURN = ("content", *_SPECIALS)
# field -> (placeholders it may use, the ones of which exactly one must appear exactly once)
_PLACEHOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prefix": ((*_SPECIALS, "date"), ()),
    "system": (_TURN, ("content",)),
    "user": (_TURN, ("content",)),
    "assistant": (_TURN, ("content",)),
    "function_call": (_TURN, ("content",)),
    "assistant_after_observation": (_TURN, ("content",)),
    "observation": ((*_TURN, "content_json", "call_id", "call_name", "call_number"), ("content", "content_json")),
    "observations": (("results",), ("results",)),
    "tool_call": (("name", "arguments", "id", "number"), ("name",)),
    "tool_call_argument": (("key", "value"), ("value",)),
    "tool_calls": (("calls",), ("calls",)),
    "tools": (("tools", "tools_json"), ("tools", "tools_json")),
    "tool_definition": (("tool", "tool_name"), ("tool",)),
    "system_header": (("date",), ()),
    "default_system": (("date",), ()),
    "default_system_tools": (("date",), ()),
    "tools_note": ((), ()),
    "generation_prompt": (_SPECIALS, ()),
    "no_thinking_prompt": ((), ()),
    "end": (_SPECIALS, ()),
    "final_stop": (_SPECIALS, ()),
    "final_end": (_SPECIALS, ()),
}
ROLES = ("system", "user", "assistant", "observation")

GENERIC_TOOLS = (
    "\n\nYou can use the following tools:\n{{tools}}\n\n"
    'To call tools, reply with only a JSON object {"name": <tool name>, "arguments": <arguments object>}, '
    "or a JSON list of such objects to call several."
)


class Reasoning(BaseModel):
    """How a family writes an answer's reasoning, and which past turns its official template keeps it in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: tuple[str, str] = ("<think>", "</think>")  # what encloses reasoning inside a message's content
    format: str = "<think>\n{{reasoning}}\n</think>\n\n"  # a kept reasoning, written before the answer
    # past turns that keep it: none (DeepSeek-R1), after_last_query (Qwen3: the turns after the last
    # user message), or last (QwQ: only the final message, written as given)
    # after_first_answer (Kimi K2: every answer after the first plain one)
    # all (every answer keeps a non-empty reasoning)
    kept: Literal["none", "after_last_query", "after_first_answer", "last", "all"] = "none"
    final_always: bool = False  # the final answer always gets the block, an empty one without reasoning
    lstrip_answer: bool = True  # newlines after the closing tag are dropped from the answer
    split_always: bool = False  # past answers lose their leading newlines even without a closing tag (QwQ)
    before_header: bool = False  # the block is a message of its own before the answer's header (gpt-oss)
    always: bool = False  # every answer gets a block: its reasoning where kept, else an empty one (GLM-4.5)
    answer_prefix: str = ""  # between the block and a non-empty answer
    lstrip_after_block: bool = True  # an answer after a block loses its leading newlines, reasoning or not (Qwen3)
    strip_whitespace: bool = False  # reasoning and answer lose all surrounding whitespace, not only newlines


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
    source: str = ""  # the official template this one renders byte for byte (docs/templates.md)
    # what `source` is: the family's official Jinja template, or, for a format whose models publish none,
    # LLaMA-Factory's definition of it or FastChat's conversation (docs/templates.md)
    verified_against: Literal["official", "llamafactory", "fastchat"] = "official"
    aliases: list[str] = []  # other names (LLaMA-Factory's) that choose this template
    model_types: list[str] = []  # config ``model_type`` values this template is the default for (auto)
    detect: list[str] = []  # texts whose presence in a tokenizer's Jinja template identifies this version (auto)
    detect_tokens: list[str] = []  # tokens whose presence in the vocabulary identifies it without a Jinja (auto)
    prefix: str = ""  # once, before everything
    system: str
    system_in_user: bool | Literal["last"] = (
        False  # true: before the first user message; last: before the final message when it is a user's
    )
    system_header: str = ""  # opens the system text (a dated header); its presence makes the system turn unconditional
    system_always: bool = False  # the system turn is written even when there is no system text
    default_system: str
    default_system_tools: str | None = None  # the default system prompt when tools are given
    date_format: str = "%d %b %Y"  # strftime format of {{date}} when the render is given no date_string
    default_date: str = ""  # {{date}} when none is given ("" = today's date)
    trim: list[Literal["system", "user", "assistant", "observation"]] = []  # roles whose content is stripped
    trim_after_system: bool = False  # a user turn is stripped with the system text in front of it (Llama 2)
    user: str
    assistant: str
    function_call: str | None = None  # default: the assistant format
    # a response right after a tool result, when the family writes it without its usual header
    # (DeepSeek); its header is then also the generation prompt there
    assistant_after_observation: str | None = None
    observation: str | None = None  # default: the user format
    # wraps the results of consecutive observation messages (the parallel calls of one turn), written
    # each by `observation`: Qwen opens one user turn for all of them
    observations: str = "{{results}}"
    tool_call: str = '{"name": "{{name}}", "arguments": {{arguments}}}'  # one call
    tool_call_argument: str | None = None  # set: {{arguments}} is each argument in this form, joined (XML-like calls)
    # how tool_call_argument writes a value that is not text: as JSON, as Python's str() (what Jinja's
    # `| string` writes: True, {'a': 1}), or str() for scalars and JSON for lists and objects
    tool_call_argument_value: Literal["json", "str", "str_scalars"] = "json"
    tool_call_separator: str = "\n"
    tool_calls: str = "{{calls}}"  # wraps the joined calls
    tools: str = GENERIC_TOOLS  # the tool-definition block
    tools_in: Literal["system", "before_system", "after_system", "first_user", "before_last_user"] = "system"
    tools_note: str = ""  # opens the system text when tools are given (Llama's "Environment: ipython")
    # between a system prompt and a tools block put in the system text; unset: the block follows the
    # prompt directly and loses its leading whitespace when there is no prompt
    tools_system_separator: str | None = None
    tools_first: bool = False  # in the system text, the tools block comes before the system prompt
    tool_definition: str = "{{tool}}"  # one tool; {{tool}} is its JSON spec
    tool_definition_separator: str = "\n"
    tool_wrap: bool = False  # {{tool}} and {{tools_json}} hold the OpenAI wrapper {"type": "function", ...}
    tool_indent: int | None = None  # JSON indentation of {{tool}} and {{tools_json}}
    reasoning: Reasoning | None = None
    generation_prompt: str | None = None  # default: the assistant header
    no_thinking_prompt: str = ""  # appended to the generation prompt when enable_thinking is false
    enable_thinking: bool = True  # the default when a render is given none
    end: str = ""  # after the last turn when no generation prompt follows
    final_stop: str = ""  # after the final answer only, where the official template writes no end marker
    final_end: str | None = (
        None  # replaces the assistant format's end marker after the final answer (gpt-oss's <|return|>)
    )
    stop_words: list[str]
    eos_ends_turn: bool  # the tokenizer's eos is the end-of-turn marker of a response

    _tokenizer: Any = PrivateAttr(default=None)
    _options: dict = PrivateAttr(default_factory=dict)

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
            found = PLACEHOLDER.findall(fmt)
            unknown = [name for name in found if name not in allowed]
            if unknown:
                raise ValueError(
                    f"key '{field}' uses the placeholder {{{{{unknown[0]}}}}}; it may use "
                    + (", ".join(f"{{{{{name}}}}}" for name in allowed) or "none")
                )
            if required and sum(found.count(name) for name in required) != 1:
                raise ValueError(
                    f"key '{field}' must contain "
                    + " or ".join(f"{{{{{name}}}}}" for name in required)
                    + " exactly once"
                )
        if self.reasoning is not None and self.reasoning.format.count("{{reasoning}}") != 1:
            raise ValueError("key 'reasoning.format' must contain {{reasoning}} exactly once")
        ends = self.assistant.partition(CONTENT)[2] + self.final_stop + (self.final_end or "")
        if self.eos_ends_turn != (EOS in ends):
            raise ValueError(
                "key 'eos_ends_turn' is "
                + (
                    "true but the assistant format has no {{eos_token}} after {{content}}"
                    if self.eos_ends_turn
                    else "false but the assistant format ends its turn with {{eos_token}}"
                )
            )
        if any(not isinstance(word, str) or not word for word in self.stop_words):
            raise ValueError("key 'stop_words' must hold non-empty strings")
        return self

    # -- public API ----------------------------------------------------------------------------

    def bind(self, tokenizer: Any) -> Template:
        """A copy that fills ``{{bos_token}}``/``{{eos_token}}`` from ``tokenizer`` when render gets none."""
        bound = self.model_copy()
        bound._tokenizer = tokenizer
        bound._options = dict(self._options)
        return bound

    def configure(self, *, reasoning: str | None = None, enable_thinking: bool | None = None) -> Template:
        """A copy whose renders use these defaults (the run's ``reasoning`` and ``enable_thinking`` settings)."""
        copy = self.bind(self._tokenizer)
        copy._options.update(
            {k: v for k, v in {"reasoning": reasoning, "enable_thinking": enable_thinking}.items() if v is not None}
        )
        return copy

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        system: str = "",
        tools: str | Sequence = "",
        add_generation_prompt: bool = False,
        tokenizer: Any = None,
        date_string: str | None = None,
        enable_thinking: bool | None = None,
        reasoning: str | None = None,
    ) -> list[Segment]:
        """The conversation as segments: prompt text, then the trained text of each response turn.

        ``system`` falls back to :attr:`default_system`; ``tools`` (JSON tool definitions) go
        where this family puts them; a function_call message holds its call(s) as JSON and is
        rendered in the family's tool-call syntax. ``date_string`` fills a dated system header;
        ``enable_thinking`` and ``reasoning`` (keep, drop or train) steer reasoning blocks.
        """
        options = {"date_string": date_string, "enable_thinking": enable_thinking, "reasoning": reasoning}
        options = {**self._options, **{k: v for k, v in options.items() if v is not None}}
        return render(
            self,
            messages,
            system=system,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            specials=self.specials(tokenizer),
            **options,
        )

    def render_text(self, messages: Sequence[Mapping], **kwargs: Any) -> str:
        """The rendered conversation as one string (the segments joined)."""
        return "".join(segment.text for segment in self.render(messages, **kwargs))

    def specials(self, tokenizer: Any = None) -> dict[str, str]:
        """``bos_token``/``eos_token`` of ``tokenizer`` (or the bound one), for the formats that use them."""
        tokenizer = tokenizer if tokenizer is not None else self._tokenizer
        formats = [getattr(self, field) or "" for field in _PLACEHOLDERS]
        if not any("_token}}" in fmt for fmt in formats):
            return {"bos_token": "", "eos_token": ""}
        if tokenizer is None:
            raise PluginError(
                f"template '{self.name}' writes the tokenizer's special tokens; pass tokenizer= to render() "
                "or use get_template(), which binds the model's tokenizer"
            )
        eos = getattr(tokenizer, "eos_token", None)
        if not eos and any(EOS in fmt for fmt in formats):
            raise PluginError(
                f"template '{self.name}' ends answers with the eos token, but the tokenizer has none; "
                "set tokenizer.eos_token or choose another template"
            )
        return {"bos_token": getattr(tokenizer, "bos_token", None) or "", "eos_token": eos or ""}
