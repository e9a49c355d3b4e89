"""``factory chat``: one-shot (``--prompt``) or an interactive multi-turn session in the terminal.

Answers stream token by token from the configured engine, which renders the conversation with
the same chat template training used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from factory.config import RunConfig, load_config
from factory.infer.base import Engine, GenerationRequest, load_engine

HELP = "commands: /clear (forget the conversation), /system TEXT (set the system prompt), /exit"


class ChatSession:
    """A conversation with an engine: the history, the system prompt, and the slash commands."""

    def __init__(self, engine: Engine, cfg: RunConfig, out: TextIO) -> None:
        self.engine = engine
        self.cfg = cfg
        self.out = out
        self.system = cfg.system
        self.history: list[dict[str, str]] = []

    def ask(self, text: str) -> str:
        """Stream the answer to ``text`` to the output and keep both turns in the history."""
        messages = [*self.history, {"role": "user", "content": text}]
        stream = self.engine.stream(GenerationRequest.from_config(self.cfg, messages, system=self.system))
        parts = []
        try:
            for delta in stream:
                parts.append(delta)
                self.out.write(delta)
                self.out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            stream.close()
            self.out.write("\n(answer interrupted; it is not kept in the conversation)\n")
            return ""
        self.out.write("\n")
        answer = "".join(parts)
        self.history = [*messages, {"role": "assistant", "content": answer}]
        return answer

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text in ("/exit", "/quit"):
            return False
        if text == "/clear":
            self.history = []
            self.out.write("(conversation cleared)\n")
        elif text == "/system" or text.startswith("/system "):
            self.system = text.removeprefix("/system").strip() or None
            self.history = []
            shown = f"set to {self.system!r}" if self.system else "back to the default"
            self.out.write(f"(system prompt {shown}; conversation cleared)\n")
        elif text.startswith("/"):
            self.out.write(f"(unknown command {text.split()[0]}) {HELP}\n")
        else:
            self.out.write("assistant> ")
            self.ask(text)
        return True


def _lines(stdin: TextIO, out: TextIO) -> Iterator[str]:
    """User input until end of file (piped stdin or Ctrl-D); a terminal gets a prompt and line editing."""
    if not stdin.isatty():
        yield from stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            out.write("\n")
            return


def run_chat(
    config: str | None,
    overrides: Iterable[str],
    *,
    prompt: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Chat with the configured model (and adapter): answer ``prompt`` and exit, or read turns from stdin."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    cfg = load_config(config, overrides)
    with load_engine(cfg, cfg.manager()) as engine:
        session = ChatSession(engine, cfg, out)
        if prompt is not None:
            session.ask(prompt)
            return 0
        out.write(HELP + "\n")
        for line in _lines(stdin, out):
            if not session.handle(line):
                break
    return 0
