"""The ``vllm`` engine: vLLM's AsyncLLMEngine behind factory's engine contract.

vLLM batches continuously on its own; this class renders prompts with factory's chat template
(so what was tuned is what is served), runs vLLM's event loop in a background thread, and turns
its cumulative outputs into text deltas on a :class:`factory.infer.base.TextStream`. A stream
its consumer closes is aborted in vLLM, which frees the sequence's slot and KV cache.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from factory.plugin_api import (
    Engine,
    GenerationRequest,
    GenerationResult,
    PluginManager,
    PromptTooLongError,
    RunConfig,
    TextStream,
    prompt_ids,
    split_stop_words,
)
from factory_plugin_vllm.wiring import engine_args, sampling_args, serve_plan

CANCEL_POLL_SECONDS = 0.05


class VLLMEngine(Engine):
    """Serve ``cfg.model`` (+ ``cfg.adapter``) with vLLM."""

    def __init__(self, cfg: RunConfig, manager: PluginManager) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.lora.request import LoRARequest

        from factory.plugin_api import get_template

        plan = serve_plan(cfg)
        options = cfg.options("vllm")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="factory-vllm-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**engine_args(cfg, options, plan))

        async def create() -> Any:  # vLLM's engine binds to the loop it is created in
            return AsyncLLMEngine.from_engine_args(args)

        self._engine = self._wait(create())
        self.tokenizer = AutoTokenizer.from_pretrained(plan.tokenizer, trust_remote_code=cfg.trust_remote_code)
        self.template = get_template(cfg.template, self.tokenizer, manager, enable_thinking=cfg.enable_thinking)
        self.context_length = options.max_model_len or self._wait(self._engine.get_model_config()).max_model_len
        self._stop_ids, self._stop_strings = split_stop_words(self.template.stop_words, self.tokenizer.get_vocab())
        self._lora = LoRARequest("adapter", 1, plan.lora) if plan.lora else None
        self._counts = {"requests": 0, "running": 0, "stop": 0, "length": 0, "cancelled": 0}

    def _wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stream(self, request: GenerationRequest) -> TextStream:
        ids = prompt_ids(self.template, self.tokenizer, request)
        if len(ids) >= self.context_length:
            raise PromptTooLongError(len(ids), self.context_length)
        stream = TextStream(prompt_tokens=len(ids))
        limit = min(request.max_new_tokens, self.context_length - len(ids))
        self._counts["requests"] += 1
        asyncio.run_coroutine_threadsafe(self._generate(request, ids, limit, stream), self._loop)
        return stream

    async def _generate(self, request: GenerationRequest, ids: list[int], limit: int, stream: TextStream) -> None:
        from vllm import SamplingParams

        request_id = uuid.uuid4().hex
        params = SamplingParams(**sampling_args(request, self._stop_ids, self._stop_strings, limit))
        watcher = asyncio.create_task(self._abort_when_cancelled(stream, request_id))
        self._counts["running"] += 1
        sent, tokens = "", 0
        try:
            outputs = self._engine.generate({"prompt_token_ids": ids}, params, request_id, lora_request=self._lora)
            async for output in outputs:
                completion = output.outputs[0]
                stream.push(completion.text[len(sent) :])
                sent, tokens = completion.text, len(completion.token_ids)
                if output.finished:
                    self._finish(stream, sent, "length" if completion.finish_reason == "length" else "stop", tokens)
                    return
            self._finish(stream, sent, "cancelled", tokens)  # vLLM ends an aborted request's outputs early
        except (Exception, asyncio.CancelledError) as exc:
            if stream.cancelled:
                self._finish(stream, sent, "cancelled", tokens)
            else:
                stream.fail(exc)
        finally:
            watcher.cancel()
            self._counts["running"] -= 1

    def _finish(self, stream: TextStream, text: str, reason: Any, tokens: int) -> None:
        self._counts[reason] += 1
        stream.finish(GenerationResult(text, reason, stream.prompt_tokens, tokens))

    async def _abort_when_cancelled(self, stream: TextStream, request_id: str) -> None:
        while not stream.cancelled:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
        await self._engine.abort(request_id)

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=60)
