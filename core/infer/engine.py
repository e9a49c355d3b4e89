"""The built-in ``transformers`` engine: ``model.generate`` with batching, streaming and cancelling.

Requests are queued; one worker thread takes the oldest one together with every queued request
that can share its decoding settings (greedy, or the same temperature/top_p/seed), left-pads them
into one batch and runs ``generate``. A transformers streamer receives each step's tokens and
turns them into per-request text deltas; a stopping criterion ends rows whose request hit a
stop string, its own token limit, or was cancelled by its consumer. Streaming and non-streaming
callers share this one path, so they get the same text.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from factory import hardware
from factory.config import RunConfig
from factory.infer.base import (
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    PromptTooLongError,
    RequestError,
    TextStream,
    prompt_ids,
    split_stop_words,
)
from factory.plugins import PluginManager

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what decoding shows for a character whose bytes have not all arrived


def serving_config(cfg: RunConfig) -> RunConfig:
    """The config to load the model with for inference.

    On a CPU, ``precision: auto`` serves in fp32: bf16 matmuls there decode more slowly at
    small batch sizes and make greedy answers depend on what else shares the batch.
    """
    if cfg.precision == "auto" and not hardware.cuda_devices():
        return cfg.model_copy(update={"precision": "fp32"})
    return cfg


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest sequence (prompt + answer) the model takes."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 1_000_000 else 2048


def stop_tokens(tokenizer: Any, template: Any, model: Any) -> tuple[list[int], tuple[str, ...]]:
    """Token ids that end an answer (eos and one-token stop words) and the template's other stop strings."""
    ids, strings = split_stop_words(template.stop_words, tokenizer.get_vocab())
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        ids += value if isinstance(value, list) else [value] if value is not None else []
    return sorted(set(ids)), strings


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` must wait: an unfinished character or the start of a stop string."""
    keep = len(text) - len(text.rstrip(REPLACEMENT))
    for word in stops:
        for size in range(min(len(word) - 1, len(text)), keep, -1):
            if text.endswith(word[:size]):
                keep = size
                break
    return keep


class _Row:
    """One request inside a batch: its tokens so far, what it has streamed, whether it is done."""

    def __init__(
        self,
        request: GenerationRequest,
        stream: TextStream,
        prompt_ids: list[int],
        limit: int,
        stops: tuple[str, ...],
        counts: dict[str, int],
    ) -> None:
        self.request = request
        self.stream = stream
        self.prompt_ids = prompt_ids
        self.limit = limit
        self.stops = stops
        self.counts = counts
        self.ids: list[int] = []
        self.count = 0
        self.sent = ""
        self.done = False

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can be decoded in one ``generate`` call."""
        request = self.request
        return ("greedy",) if request.greedy else ("sample", request.temperature, request.top_p, request.seed)

    def add(self, token: int, eos_ids: set[int], decode: Any) -> None:
        self.count += 1
        if token in eos_ids:
            self.finish("stop", decode(self.ids))
            return
        self.ids.append(token)
        text = decode(self.ids)
        start = max(0, len(self.sent) - max((len(word) for word in self.stops), default=0))
        cuts = [at for word in self.stops if (at := text.find(word, start)) >= 0]
        if cuts:
            self.finish("stop", text[: min(cuts)])
        elif self.count >= self.limit:
            self.finish("length", text)
        else:
            self._send(text[: len(text) - held_back(text, self.stops)])

    def _send(self, text: str) -> None:
        # Decoding a longer token list only appends to the text before it (byte-level and
        # sentencepiece tokenizers, with clean-up off), so the new part is the suffix.
        if len(text) > len(self.sent):
            delta = text[len(self.sent) :]
            self.sent += delta
            self.stream.push(delta)

    def finish(self, reason: FinishReason, text: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.counts[reason] += 1
        self.counts["generated_tokens"] += self.count
        if text is not None:
            self._send(text)
        # The answer is exactly what was streamed, so streaming and non-streaming callers agree.
        self.stream.finish(GenerationResult(self.sent, reason, len(self.prompt_ids), self.count))


class _BatchStreamer(BaseStreamer):
    """Hands each decoding step's tokens (one per row) to the rows that are still generating."""

    def __init__(self, rows: list[_Row], eos_ids: list[int], decode: Any) -> None:
        self.rows = rows
        self.eos_ids = set(eos_ids)
        self.decode = decode
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt ids
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if row.done:
                continue
            if row.stream.cancelled:
                row.finish("cancelled")
            else:
                row.add(int(token), self.eos_ids, self.decode)

    def end(self) -> None:
        for row in self.rows:
            row.finish("cancelled" if row.stream.cancelled else "length")


class _RowsDone(StoppingCriteria):
    """Per row: stop once the row's request is finished or cancelled (others in the batch go on)."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = [row.done or row.stream.cancelled for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TransformersEngine(Engine):
    """Serve a model loaded by factory's model loader (base + adapter) with ``model.generate``."""

    def __init__(self, cfg: RunConfig, manager: PluginManager) -> None:
        from factory.data.template import get_template
        from factory.model.loader import load_model

        loaded = load_model(serving_config(cfg), manager, train=False)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.template = get_template(cfg.template, self.tokenizer, manager, enable_thinking=cfg.enable_thinking)
        self.context_length = context_length(self.model, self.tokenizer)
        self.max_batch_size = cfg.max_batch_size
        self._eos_ids, self._stop_strings = stop_tokens(self.tokenizer, self.template, self.model)
        self._pending: deque[_Row] = deque()
        self._running: list[_Row] = []
        # requests queued, batches run, finished requests by how they ended, tokens generated
        self._counts = {
            "requests": 0,
            "batches": 0,
            "largest_batch": 0,
            "stop": 0,
            "length": 0,
            "cancelled": 0,
            "generated_tokens": 0,
        }
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="factory-transformers-engine", daemon=True)
        self._worker.start()

    # -- the public side ---------------------------------------------------------------------

    def stream(self, request: GenerationRequest) -> TextStream:
        return self.submit([request])[0]

    def submit(self, requests: Sequence[GenerationRequest]) -> list[TextStream]:
        rows = [self._row(request) for request in requests]
        with self._cond:
            if self._closed:
                raise RequestError("the engine is shut down; start it again to generate", code="engine_closed")
            self._pending.extend(rows)
            self._counts["requests"] += len(rows)
            self._cond.notify()
        return [row.stream for row in rows]

    def _row(self, request: GenerationRequest) -> _Row:
        ids = prompt_ids(self.template, self.tokenizer, request)
        if len(ids) >= self.context_length:
            raise PromptTooLongError(len(ids), self.context_length)
        limit = min(request.max_new_tokens, self.context_length - len(ids))
        stops = request.stop + self._stop_strings
        return _Row(request, TextStream(prompt_tokens=len(ids)), ids, limit, stops, self._counts)

    def stats(self) -> dict[str, int]:
        with self._cond:
            running = sum(not row.done for row in self._running)
            return {"queued": len(self._pending), "running": running, **self._counts}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for row in self._pending:
                row.finish("cancelled")
            self._pending.clear()
            for row in self._running:
                row.stream.close()
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout=60)

    # -- the worker --------------------------------------------------------------------------

    def _next_batch(self) -> list[_Row] | None:
        """Wait for work; take the oldest live request and every queued one that can share its batch."""
        with self._cond:
            while True:
                while self._pending and self._pending[0].stream.cancelled:
                    self._pending.popleft().finish("cancelled")
                if self._pending:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            batch, rest = [first], deque()
            while self._pending:
                row = self._pending.popleft()
                if row.stream.cancelled:
                    row.finish("cancelled")
                elif self._fits(batch, row):
                    batch.append(row)
                else:
                    rest.append(row)
            self._pending = rest
            self._running = batch
            self._counts["batches"] += 1
            self._counts["largest_batch"] = max(self._counts["largest_batch"], len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            return batch

    def _fits(self, batch: list[_Row], row: _Row) -> bool:
        """Can ``row`` join ``batch``: same decoding settings, room left, and the padded batch
        (longest prompt + most new tokens) still inside the context, for every row's positions."""
        longest = max(len(r.prompt_ids) for r in [*batch, row]) + max(r.limit for r in [*batch, row])
        return (
            len(batch) < self.max_batch_size and row.batch_key == batch[0].batch_key and longest <= self.context_length
        )

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._generate(batch)
            except Exception as exc:  # one failing batch must not stop the server
                log.exception("generation failed for a batch of %d requests", len(batch))
                for row in batch:
                    if not row.done:
                        row.done = True
                        row.stream.fail(RuntimeError(f"generation failed: {exc.__class__.__name__}: {exc}"))
            finally:
                with self._cond:
                    self._running = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _generate(self, rows: list[_Row]) -> None:
        inputs = self.tokenizer.pad(
            {"input_ids": [row.prompt_ids for row in rows]}, padding=True, padding_side="left", return_tensors="pt"
        ).to(self.model.device)
        request = rows[0].request
        if request.greedy:
            sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            sampling = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
            if request.seed is not None:
                torch.manual_seed(request.seed)
        with torch.inference_mode():
            self.model.generate(
                **inputs,
                **sampling,
                max_new_tokens=max(row.limit for row in rows),
                eos_token_id=self._eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=_BatchStreamer(rows, self._eos_ids, self._decode),
                stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
            )
