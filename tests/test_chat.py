"""``factory chat``: streaming, multi-turn history, /clear, /system, /exit, and --prompt."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from infer_helpers import ScriptedEngine

from factory.config import load_config
from factory.infer.chat import HELP, ChatSession, run_chat

MODEL = "smollm2-135m-instruct"


class Recorder(io.StringIO):
    """An output that remembers each write, to see answers arrive in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def session():
    out = Recorder()
    engine = ScriptedEngine(["First answer.", "Second answer.", "Third answer."])
    return ChatSession(engine, load_config(None, [f"model={MODEL}", "max_new_tokens=9"]), out)


def test_answers_stream_in_pieces_and_history_carries_over(session):
    assert session.handle("Hi")
    assert session.handle("And then?")
    assert session.out.writes.count("assistant> ") == 2
    assert "Fir" in session.out.writes and "st " in session.out.writes  # the engine's pieces, written as they came
    assert "assistant> First answer.\n" in session.out.getvalue()
    last = session.engine.requests[-1]
    assert [m["content"] for m in last.messages] == ["Hi", "First answer.", "And then?"]
    assert [m["role"] for m in last.messages] == ["user", "assistant", "user"]
    assert last.max_new_tokens == 9 and last.system is None


def test_clear_forgets_the_conversation(session):
    session.handle("Hi")
    session.handle("/clear")
    session.handle("Again")
    assert "(conversation cleared)" in session.out.getvalue()
    assert [m["content"] for m in session.engine.requests[-1].messages] == ["Again"]


def test_system_sets_the_prompt_and_clears(session):
    session.handle("Hi")
    session.handle("/system You are a pirate.")
    session.handle("Who are you?")
    request = session.engine.requests[-1]
    assert request.system == "You are a pirate."
    assert [m["content"] for m in request.messages] == ["Who are you?"]
    session.handle("/system")
    session.handle("Hello")
    assert session.engine.requests[-1].system is None  # back to the template's default


def test_exit_and_unknown_commands(session):
    assert session.handle("   ") and session.handle("/nonsense")
    assert "unknown command /nonsense" in session.out.getvalue() and HELP in session.out.getvalue()
    assert not session.engine.requests
    assert session.handle("/exit") is False


# -- with the real model -----------------------------------------------------------------------


def test_interactive_session_with_smollm2(smollm2_greedy):
    script = "Hi\n/clear\n/system You are a pirate.\nWho are you?\n/exit\nThis line is never read\n"
    out = io.StringIO()
    run_chat(None, [f"model={MODEL}", "max_new_tokens=12"], stdin=io.StringIO(script), out=out)
    text = out.getvalue()
    assert text.startswith(HELP)
    assert "(conversation cleared)" in text and "(system prompt set to 'You are a pirate.'" in text
    answers = [line.removeprefix("assistant> ") for line in text.splitlines() if line.startswith("assistant> ")]
    pirate = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]
    assert answers == [smollm2_greedy([{"role": "user", "content": "Hi"}], 12), smollm2_greedy(pirate, 12)]


@pytest.mark.e2e
def test_prompt_answers_once_from_the_command_line(smollm2_greedy):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "chat",
            f"model={MODEL}",
            "max_new_tokens=12",
            "--prompt",
            "Who are you?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == smollm2_greedy([{"role": "user", "content": "Who are you?"}], 12) + "\n"


def test_chat_with_a_bad_config_is_one_sentence(tmp_path, capsys):
    from factory.cli import main

    assert main(["chat", f"adapter={tmp_path / 'missing'}", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: adapter") and "Traceback" not in err
