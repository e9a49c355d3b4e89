"""``factory chat``: one-shot (--prompt) or an interactive multi-turn session in the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from factory.config import load_config
from factory.infer.generate import chat_reply
from factory.model.loader import load_model

HELP = "commands: /clear (forget the conversation), /system TEXT (set the system prompt), /exit"


def _lines() -> Iterable[str]:
    """User input until end of file (piped stdin or Ctrl-D)."""
    while True:
        try:
            yield input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return


def run_chat(config: str | None, overrides: Iterable[str], *, prompt: str | None = None) -> int:
    cfg = load_config(config, overrides)
    manager = cfg.manager()
    from factory.data.template import get_template

    loaded = load_model(cfg, manager, train=False)
    template = get_template(cfg.template, loaded.tokenizer, manager)
    settings = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    if prompt is not None:
        print(chat_reply(loaded.model, loaded.tokenizer, template, [{"role": "user", "content": prompt}], system=cfg.system, **settings))
        return 0
    system, history = cfg.system, []
    print(HELP)
    for line in _lines():
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/clear":
            history = []
            print("(conversation cleared)")
            continue
        if text.startswith("/system"):
            system = text.removeprefix("/system").strip() or None
            history = []
            print("(system prompt set; conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        answer = chat_reply(loaded.model, loaded.tokenizer, template, history, system=system, **settings)
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}")
    return 0
