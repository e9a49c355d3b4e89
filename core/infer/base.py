"""The engine contract: what chat, the server and evaluators hand an engine and get back.

An engine turns a :class:`GenerationRequest` (a conversation in factory's standard form plus
sampling settings) into text. It renders the prompt with the same chat template training used,
so what was tuned is what is served. Results come back through a :class:`TextStream`, which a
thread or an event loop can consume while the engine's own worker produces it, and which the
consumer closes to cancel (a client that goes away frees its slot).

This module imports nothing heavy: the server, the chat CLI and engine plugins all use it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from factory.errors import FactoryError

FinishReason = Literal["stop", "length", "cancelled"]


class RequestError(FactoryError):
    """A generation request the engine cannot serve as given (the server answers 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class PromptTooLongError(RequestError):
    """The rendered prompt does not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens long but the model's context is {context_length} tokens; "
            "shorten the conversation",
            param="messages",
            code="context_length_exceeded",
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce.

    ``messages`` use factory's roles (user, assistant, function_call, observation); ``system``
    None means the template's default system prompt; ``tools`` is a JSON list of function specs
    (empty: none). ``temperature`` 0 means greedy decoding. ``stop`` strings end the answer and
    are not part of it. With a ``seed``, sampling is reproducible.
    """

    messages: Sequence[Mapping[str, Any]]
    system: str | None = None
    tools: str = ""
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise RequestError(f"max_new_tokens must be positive, got {self.max_new_tokens}", param="max_tokens")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}", param="temperature")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        object.__setattr__(self, "stop", tuple(word for word in self.stop if word))

    @classmethod
    def from_config(cls, cfg: Any, messages: Sequence[Mapping[str, Any]], **overrides: Any) -> GenerationRequest:
        """A request with the run config's sampling settings (max_new_tokens, temperature, top_p, system)."""
        settings: dict[str, Any] = {
            "system": cfg.system,
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
        }
        settings.update(overrides)
        return cls(messages=list(messages), **settings)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationResult:
    """A finished completion and what it cost."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


_END = object()


@dataclass
class TextStream:
    """Text deltas of one completion, pushed by an engine's worker and read by one consumer.

    Iterate it (blocking) or ``async for`` it (from an event loop); after the last delta,
    :attr:`result` holds the :class:`GenerationResult`. :meth:`close` cancels the generation:
    the engine notices :attr:`cancelled` and frees the request's slot. There is no
    thread-to-asyncio channel in the standard library (``queue.Queue`` blocks a loop,
    ``asyncio.Queue`` is not thread-safe), hence this small one.
    """

    prompt_tokens: int
    result: GenerationResult | None = None
    _items: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = field(default=None, repr=False)
    _ended: bool = field(default=False, repr=False)

    # -- the producer (an engine) ------------------------------------------------------------

    def push(self, text: str) -> None:
        if text:
            self._put(text)

    def finish(self, result: GenerationResult) -> None:
        self.result = result
        self._put(_END)

    def fail(self, error: BaseException) -> None:
        self._put(error)
        self._put(_END)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, item: object) -> None:
        self._items.put(item)
        waker = self._waker
        if waker is not None:
            loop, event = waker
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass

    # -- the consumer ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop generating (idempotent); the engine finishes the stream with ``cancelled``."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        return self._take(self._items.get())

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        if self._waker is None:
            self._waker = (asyncio.get_running_loop(), asyncio.Event())
        event = self._waker[1]
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                # Clear, then look again: a push between the two is seen by the second look,
                # and a push after it sets the event (both run on this loop, in order).
                event.clear()
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    await event.wait()
                    continue
            try:
                return self._take(item)
            except StopIteration:
                raise StopAsyncIteration from None

    def _take(self, item: object) -> str:
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            self._drain()
            raise item
        assert isinstance(item, str)
        return item

    def _drain(self) -> None:
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return

    def text(self) -> str:
        """Wait for the whole completion and return it (blocking)."""
        return "".join(self)


class Engine(ABC):
    """Base of inference engines (the ``engines`` hook): ``Engine(cfg, manager)``.

    Subclasses implement :meth:`stream` and set :attr:`template`, :attr:`tokenizer` and
    :attr:`context_length`; :meth:`generate` (used by evaluators) is built on :meth:`stream`
    so both paths give the same text.
    """

    template: Any
    tokenizer: Any
    context_length: int
    # The LoadedModel behind the engine when it holds one in this process: a logit-scoring
    # evaluator (multiple choice) reuses it instead of loading a second copy.
    loaded: Any = None
    # Told the size of every batch the engine runs, when set (the service's monitoring sets it).
    on_batch: Callable[[int], None] | None = None

    @abstractmethod
    def stream(self, request: GenerationRequest) -> TextStream:
        """Queue ``request`` and return its stream at once; raise :class:`RequestError` for a bad request."""

    def submit(self, requests: Sequence[GenerationRequest]) -> list[TextStream]:
        """Queue several requests at once (an engine that batches overrides this to queue them together)."""
        streams: list[TextStream] = []
        try:
            for request in requests:
                streams.append(self.stream(request))
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        return streams

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Complete all ``requests`` (queued together, so an engine can batch them), in order."""
        streams = self.submit(requests)
        try:
            results = []
            for stream in streams:
                for _ in stream:
                    pass
                assert stream.result is not None
                results.append(stream.result)
            return results
        finally:  # on an error, do not leave the others generating for nobody
            for stream in streams:
                stream.close()

    def stats(self) -> dict[str, int]:
        """Counters for ``GET /health`` and ``/metrics`` (e.g. queued and running requests, generated tokens)."""
        return {}

    def close(self) -> None:  # noqa: B027 -- engines without workers have nothing to release
        """Release the model and stop workers."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prompt_ids(template: Any, tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The token ids of the request's prompt: the conversation rendered by the chat template, ready for the answer.

    Tokenized as one string without added special tokens, exactly as training tokenized it.
    """
    prompt = template.render_text(
        request.messages,
        system=request.system or "",
        tools=request.tools,
        add_generation_prompt=True,
        tokenizer=tokenizer,
    )
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def split_stop_words(words: Sequence[str], vocab: Mapping[str, int]) -> tuple[list[int], tuple[str, ...]]:
    """A template's stop words as token ids (those that are one token) and strings (the others)."""
    ids = [vocab[word] for word in words if word in vocab]
    return ids, tuple(word for word in words if word not in vocab)


def load_engine(cfg: Any, manager: Any | None = None) -> Engine:
    """The engine ``cfg.engine`` names, constructed for ``cfg`` (loads the model)."""
    manager = manager if manager is not None else cfg.manager()
    engine_class = manager.load("engines", cfg.engine)
    return engine_class(cfg, manager)
