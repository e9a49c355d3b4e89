"""The OpenAI-compatible routes in front of an engine, and OpenAI's error shape for every error.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming, or
server-sent events ending with ``data: [DONE]``). Every error is OpenAI's JSON error shape with
the matching status. Requests only queue work on the engine, whose worker batches them; a
client that disconnects has its generation cancelled. The app around these routes (keys, size
limits, evaluation jobs, ``factory serve``) is the service room's: :mod:`factory.service.app`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from factory.config import RunConfig
from factory.errors import FactoryError
from factory.infer.base import Engine, GenerationResult, RequestError, TextStream
from factory.infer.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    error_body,
    new_id,
    now,
    tool_calls_of,
)
from factory.infer.tools import extract_tool_calls

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.5


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        body = error_body(self.message, self.type, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One sentence (and the offending parameter) for the first problem in a request body."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail}); send a JSON object", None
    if not loc:
        return "the request body must be a JSON object with 'model' and 'messages'", None
    param = ".".join(loc)
    if error.get("type") == "missing":
        return f"'{param}' is required", param
    given = error.get("input")
    shown = f" (got {given!r})" if isinstance(given, (int, float, str, bool)) and len(repr(given)) < 60 else ""
    return f"'{param}': {error.get('msg', 'is invalid')}{shown}", param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, ours and the framework's, in OpenAI's shape; never show internals."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return ApiError(400, message, param=param).response()

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> JSONResponse:
        return ApiError(400, str(exc), param=exc.param, code=exc.code).response()

    @app.exception_handler(FactoryError)
    async def _factory_error(_: Request, exc: FactoryError) -> JSONResponse:
        return ApiError(400, str(exc), param=getattr(exc, "param", None)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception("request failed (incident %s)", incident)
        return ApiError(
            500, f"internal error (incident {incident} in the server's log)", type_="server_error"
        ).response()


def _finish_reason(result: GenerationResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _sse(chunk: ChatCompletionChunk | dict[str, Any]) -> str:
    data = chunk.model_dump_json() if isinstance(chunk, ChatCompletionChunk) else json.dumps(chunk)
    return f"data: {data}\n\n"


async def _merge(streams: list[TextStream]) -> AsyncIterator[tuple[int, str | None]]:
    """Deltas of several streams as they come: ``(index, text)``, and ``(index, None)`` when one ends."""
    queue: asyncio.Queue[tuple[int, str | None | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: TextStream) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, None))
        except Exception as exc:  # handed to the consumer, which answers with an error event
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            remaining -= item is None
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def _close_all(streams: Iterable[TextStream]) -> None:
    for stream in streams:
        stream.close()


async def _collect(streams: list[TextStream], request: Request) -> None:
    """Wait for every stream to finish; cancel them all if the client goes away first."""

    async def drain(stream: TextStream) -> None:
        async for _ in stream:
            pass

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        _close_all(streams)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(drain(stream) for stream in streams))
    finally:
        watcher.cancel()


def add_inference_routes(app: FastAPI, engine: Engine, cfg: RunConfig) -> None:
    """Serve ``engine`` on ``app`` under the model id ``cfg.served_model_name or cfg.model``."""
    model_id = cfg.served_model_name or cfg.model
    created = now()
    app.state.engine = engine

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.model != model_id:
            raise ApiError(
                404,
                f"the model '{body.model}' does not exist here; this server serves '{model_id}'",
                param="model",
                code="model_not_found",
            )
        generation = body.to_factory(cfg)

        streams = await run_in_threadpool(engine.submit, [generation] * body.n)
        completion_id, stamp = new_id("chatcmpl"), now()
        if body.stream:
            events = _events(engine, body, streams, completion_id, stamp, model_id)
            return StreamingResponse(
                events, media_type="text/event-stream", background=BackgroundTask(_close_all, streams)
            )
        try:
            await _collect(streams, request)
        finally:
            _close_all(streams)
        results = [stream.result for stream in streams]
        choices = []
        for index, result in enumerate(results):
            assert result is not None
            calls = extract_tool_calls(engine.template, result.text) if body.parses_tools else None
            if calls:
                message = ResponseMessage(content=None, tool_calls=tool_calls_of(calls))
                choices.append(Choice(index=index, message=message, finish_reason="tool_calls"))
            else:
                choices.append(
                    Choice(
                        index=index, message=ResponseMessage(content=result.text), finish_reason=_finish_reason(result)
                    )
                )
        return ChatCompletion(
            id=completion_id, created=stamp, model=model_id, choices=choices, usage=_usage(streams, results)
        )


def _usage(streams: list[TextStream], results: list[GenerationResult | None]) -> Usage:
    """OpenAI counts the prompt once, and the completion tokens of every choice."""
    prompt = streams[0].prompt_tokens
    completion = sum(result.completion_tokens for result in results if result is not None)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _events(
    engine: Engine,
    body: ChatCompletionRequest,
    streams: list[TextStream],
    completion_id: str,
    stamp: int,
    model_id: str,
) -> AsyncIterator[str]:
    """The server-sent events of a streamed completion.

    With tools, an answer may turn out to be a tool call, which is only known once it is
    complete: such answers are sent in one piece at the end instead of token by token.
    """

    def chunk(index: int, delta: Delta, finish: str | None = None) -> str:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish)
        return _sse(ChatCompletionChunk(id=completion_id, created=stamp, model=model_id, choices=[choice]))

    held = [""] * len(streams)
    try:
        for index in range(len(streams)):
            yield chunk(index, Delta(role="assistant", content=""))
        async for index, delta in _merge(streams):
            if delta is not None:
                if body.parses_tools:
                    held[index] += delta
                else:
                    yield chunk(index, Delta(content=delta))
                continue
            result = streams[index].result
            assert result is not None
            calls = extract_tool_calls(engine.template, result.text) if body.parses_tools else None
            if calls:
                tool_calls = [
                    {"index": position, **call.model_dump()} for position, call in enumerate(tool_calls_of(calls))
                ]
                yield chunk(index, Delta(tool_calls=tool_calls))
                yield chunk(index, Delta(), "tool_calls")
                continue
            if held[index]:
                yield chunk(index, Delta(content=held[index]))
            yield chunk(index, Delta(), _finish_reason(result))
        if body.stream_options is not None and body.stream_options.include_usage:
            usage = _usage(streams, [stream.result for stream in streams])
            yield _sse(ChatCompletionChunk(id=completion_id, created=stamp, model=model_id, choices=[], usage=usage))
    except Exception as exc:  # the status line is sent already: report in the stream
        log.exception("streamed generation failed")
        yield _sse(error_body(f"generation failed: {exc}", "server_error"))
    finally:
        _close_all(streams)
    yield "data: [DONE]\n\n"
