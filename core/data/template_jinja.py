"""The tokenizer's own Jinja ``chat_template`` as a template, byte-exact with ``apply_chat_template``.

Jinja templates do not say which text is the response, so the spans are found by rendering
prefixes: the text up to a response turn rendered with ``add_generation_prompt=True`` is the
prompt, and what rendering the turn itself adds is trained. That needs every rendering to
extend the previous one; a template that rewrites earlier turns (e.g. one that drops past
reasoning) is refused with the advice to use a named template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import PrivateAttr

from factory.data.record import RESPONSE_ROLES
from factory.data.template_format import AUTO, CONTENT, EOS, Segment, Template
from factory.data.template_render import Segments, describe_tools, role_content, take_system
from factory.data.template_tools import parse_tools, tool_calls, wrapped
from factory.errors import DataError, PluginError


def jinja_text(tokenizer: Any) -> str:
    """The tokenizer's chat template as one text (all of them, when it has several named ones)."""
    source = getattr(tokenizer, "chat_template", None) or ""
    return source if isinstance(source, str) else " ".join(map(str, dict(source).values()))


class NotPrefixConsistent(PluginError):
    """A Jinja template that rewrites earlier turns, so its trained spans cannot be found."""


class JinjaTemplate(Template):
    """The tokenizer's Jinja ``chat_template``, so rendering is byte-exact with ``apply_chat_template``."""

    _suggestion: str = PrivateAttr(default="")
    _hf_tools: bool = PrivateAttr(default=False)
    _hf_calls: bool = PrivateAttr(default=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, suggestion: str = "") -> JinjaTemplate:
        """The template of ``tokenizer``; ``suggestion`` is the named template errors recommend."""
        text = jinja_text(tokenizer)
        template = cls(
            name=AUTO,
            description=f"the tokenizer's own chat template ({getattr(tokenizer, 'name_or_path', '') or 'in memory'})",
            system=CONTENT,
            default_system="",  # the Jinja template inserts its own default when no system is given
            user=CONTENT,
            assistant=CONTENT,
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
                "assistant": CONTENT + (marker.replace(eos, EOS) if eos else marker),
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
        date_string: str | None = None,
        enable_thinking: bool | None = None,
        reasoning: str | None = None,
    ) -> list[Segment]:
        """Segments whose joined text equals ``tokenizer.apply_chat_template(..., tokenize=False)``.

        ``tokenizer`` is accepted for the common signature; the bound tokenizer's template is used.
        ``date_string`` and ``enable_thinking`` are passed to the Jinja template, which reads them
        by those names when it uses them; ``reasoning`` has no effect (the text is the Jinja's).
        """
        messages, system = take_system(messages, system)
        specs = parse_tools(tools) if tools else []
        kwargs: dict[str, Any] = {"tools": [wrapped(spec) for spec in specs]} if specs and self._hf_tools else {}
        for key, value in (("date_string", date_string), ("enable_thinking", enable_thinking)):
            value = value if value is not None else self._options.get(key)
            if value is not None:
                kwargs[key] = value
        if specs and not self._hf_tools:  # the Jinja has no place for tools: describe them in the system text
            system = describe_tools(self, system, specs)
        hf = [{"role": "system", "content": system}] if system else []
        hf += [self._hf_message(message, index) for index, message in enumerate(messages)]
        offset = len(hf) - len(messages)
        out = Segments()
        done = ""
        ends_with_response = False
        for index, message in enumerate(messages):
            ends_with_response = message["role"] in RESPONSE_ROLES
            if not ends_with_response:
                continue
            turn = offset + index
            prompt = self._extend(done, self._apply(hf[:turn], True, kwargs), turn)
            full = self._extend(prompt, self._apply(hf[: turn + 1], False, kwargs), turn + 1)
            head = prompt[len(done) :]
            out.response(head, [(full[len(prompt) :], True)], "", "")
            done = full
        if add_generation_prompt or not ends_with_response:
            out.prompt(self._extend(done, self._apply(hf, add_generation_prompt, kwargs), len(hf))[len(done) :])
        return out.items

    def _hf_message(self, message: Mapping, index: int) -> dict:
        """A standard-record message in the shape Hugging Face chat templates expect."""
        role, content = role_content(message, index)
        if role == "observation":
            return {"role": "tool", "content": content}
        if role == "function_call":
            calls = [
                {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in tool_calls(content, index)
            ]
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
            raise NotPrefixConsistent(
                f"{self.description} is not prefix-consistent: rendering {count} messages changes the text of the earlier ones, so the "
                f"trained spans cannot be found; set template: {self._suggestion or 'NAME'} to use a named "
                "template instead of auto"
            )
        return text
