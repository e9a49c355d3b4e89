"""The OpenAI chat-completions wire format as pydantic models, and its mapping to factory's.

Requests are validated here (sampling ranges, message shapes) so the server answers a bad
request with OpenAI's error JSON before any work is queued. Fields of OpenAI's API that this
server does not act on (``logprobs``, penalties, ``user``...) are accepted and ignored, as
other OpenAI-compatible servers do, so existing clients keep working.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from factory.config import MAX_COUNT
from factory.infer.base import GenerationRequest, RequestError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- requests ----------------------------------------------------------------------------------


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self, index: int) -> str:
        """The message's text; other content parts (images, audio) are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise RequestError(
                    f"message {index + 1} has a content part of type '{part.type}'; this server takes text only",
                    param=f"messages.{index}.content",
                )
            parts.append(part.text)
        return "".join(parts)


class FunctionSpec(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    # Every number has both bounds (OpenAI's where it states them): a value past them is a 400
    # here, never an overflow in the engine.
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, gt=0, le=MAX_COUNT)
    max_completion_tokens: int | None = Field(None, gt=0, le=MAX_COUNT)
    stop: str | list[str] | None = Field(None, max_length=16)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch.manual_seed's range
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto"] | dict[str, Any] | None = None

    def to_factory(self, defaults: Any) -> GenerationRequest:
        """The engine request, with the server config's settings where the client gave none."""
        if isinstance(self.tool_choice, dict):
            raise RequestError(
                "tool_choice naming a function is not supported; send 'auto' or 'none'", param="tool_choice"
            )
        system, messages = split_messages(self.messages)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        tools = json.dumps([tool.function.model_dump(exclude_none=True) for tool in self.tools]) if self.tools else ""
        return GenerationRequest.from_config(
            defaults,
            messages,
            system=system if system is not None else defaults.system,
            tools=tools,
            max_new_tokens=self.max_completion_tokens or self.max_tokens or defaults.max_new_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            stop=tuple(stop),
            seed=self.seed,
        )

    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


def split_messages(messages: list[ChatMessage]) -> tuple[str | None, list[dict[str, str]]]:
    """OpenAI messages -> (system prompt, factory messages).

    System/developer messages become the system prompt; ``tool`` (and legacy ``function``)
    results become ``observation`` turns; an assistant turn with ``tool_calls`` becomes a
    ``function_call`` turn holding the calls as JSON, which the template renders in its syntax.
    """
    system: list[str] = []
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        text = message.text(index)
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role in ("tool", "function"):
            out.append({"role": "observation", "content": text})
        elif message.role == "assistant" and message.tool_calls:
            calls = [
                {"name": call.function.name, "arguments": _json_arguments(call.function.arguments, index)}
                for call in message.tool_calls
            ]
            out.append({"role": "function_call", "content": json.dumps(calls, ensure_ascii=False)})
        else:
            out.append({"role": message.role, "content": text})
    return ("\n\n".join(system) if system else None), out


def _json_arguments(arguments: str | dict[str, Any], index: int) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments or "{}")
    except json.JSONDecodeError:
        raise RequestError(
            f"the tool call arguments in message {index + 1} are not valid JSON: {arguments[:60]!r}",
            param=f"messages.{index}.tool_calls",
        ) from None


# -- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseToolCall(BaseModel):
    id: str = Field(default_factory=lambda: new_id("call"))
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        # A delta carries only what changed: the role once, then content (or tool calls).
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "factory"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def tool_calls_of(calls: list[tuple[str, Any]]) -> list[ResponseToolCall]:
    """Parsed ``(name, arguments)`` pairs as OpenAI tool calls (arguments as a JSON string)."""
    return [
        ResponseToolCall(function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))
        for name, arguments in calls
    ]


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
