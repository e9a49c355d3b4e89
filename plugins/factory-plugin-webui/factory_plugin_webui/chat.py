"""The Chat tab's engine: one model (and adapter) loaded at a time in the page's process, answers streamed.

Chat is interactive, so it runs in the page rather than through the job queue; it uses the
same engine as ``factory chat`` and ``factory serve`` (:func:`factory.plugin_api.load_engine`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from factory.plugin_api import ConfigError, GenerationRequest, load_engine

_ENGINE_KEYS = ("model", "adapter", "template", "precision", "quantization", "engine", "trust_remote_code")


def check_tools(text: str) -> str:
    """The tool definitions as the engine takes them (a JSON list), or one sentence saying what is wrong."""
    if not text.strip():
        return ""
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"tools are not valid JSON ({exc.msg} at line {exc.lineno}); give a JSON list of function specs"
        ) from None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ConfigError(
            'tools must be a JSON list of function specs, e.g. [{"name": "get_weather", "parameters": {}}]'
        )
    return json.dumps(tools, ensure_ascii=False)


class ChatDesk:
    """Holds the loaded engine; a different model or adapter replaces it."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def _ensure(self, cfg: Any) -> Any:
        key = tuple(getattr(cfg, name) for name in _ENGINE_KEYS)
        with self._lock:
            if self._engine is None or key != self._key:
                self._close()
                self._engine, self._key = load_engine(cfg), key
            return self._engine

    def load(self, cfg: Any) -> str:
        self._ensure(cfg)
        return f"loaded {cfg.model}" + (f" with adapter {cfg.adapter}" if cfg.adapter else "")

    def answer(self, cfg: Any, messages: Sequence[dict[str, Any]], tools: str) -> Iterator[str]:
        """The answer so far, after each streamed piece."""
        engine = self._ensure(cfg)
        request = GenerationRequest.from_config(
            cfg, [{"role": m["role"], "content": m["content"]} for m in messages], tools=check_tools(tools)
        )
        text = ""
        for delta in engine.stream(request):
            text += delta
            yield text

    def unload(self) -> str:
        with self._lock:
            self._close()
        return "unloaded"

    def _close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._key = None, None
