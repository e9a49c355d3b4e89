"""Helpers shared by the inference tests: a scripted engine and a server running in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.data.template import PACKAGED
from factory.infer.base import Engine, GenerationRequest, GenerationResult, TextStream


class ScriptedEngine(Engine):
    """Answers every request with the next scripted text, in a few pieces; records the requests."""

    context_length = 4096
    tokenizer = None

    def __init__(self, answers: list[str], template_name: str = "chatml") -> None:
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []
        self.template = PACKAGED.get(template_name)

    def stream(self, request: GenerationRequest) -> TextStream:
        self.requests.append(request)
        text = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        stream = TextStream(prompt_tokens=len(request.messages))
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
        for piece in pieces:
            stream.push(piece)
        stream.finish(GenerationResult(text, "stop", len(request.messages), len(pieces)))
        return stream


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def transformers_greedy(model_path: Path) -> Callable[[list[dict], int], str]:
    """Greedy answers straight from transformers (apply_chat_template + generate), not through factory: the oracle."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def answer(messages: list[dict], max_new_tokens: int) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    return answer
