"""An Ollama Modelfile for an exported model: FROM the folder, the chat template as a Go template.

Ollama renders prompts with Go's text/template over ``.System`` and ``.Messages`` (each with
``.Role`` and ``.Content``). The Go template is derived by rendering probe conversations with the
run's chat template (factory's slot template or the tokenizer's own Jinja) and cutting the text
at the probe contents: what comes before the system text, what joins the system text to the first
user message, what follows a user message (its end and the assistant header), and what follows an
answer (its end and the next user header). Rendering a longer conversation with those pieces must
give exactly what the chat template gives, or the export is refused: a Modelfile that prompts
the model differently from training would answer worse without saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

MODELFILE = "Modelfile"
_MARK = "\u2063{}\u2063"  # invisible separator around each probe text: found nowhere in a real template


@dataclass(frozen=True)
class TurnPieces:
    """The text between turns, as a chat template writes it."""

    before_system: str  # prefix and system header
    system_to_user: str  # end of the system turn, header of the first user turn
    before_user_unsystemed: str  # everything before the first user text when no system text is given
    after_user: str  # end of a user turn and the assistant header (the generation prompt)
    after_answer: str  # end of an answer and the next user header

    def render(self, system: str, messages: list[dict[str, str]]) -> str:
        """What the Go template gives for this conversation (the Go template's semantics, in Python)."""
        text = self.before_system + system + self.system_to_user if system else self.before_user_unsystemed
        for message in messages:
            text += message["content"] + (self.after_user if message["role"] == "user" else self.after_answer)
        return text

    def go_template(self) -> str:
        return (
            f"{{{{ if .System }}}}{self.before_system}{{{{ .System }}}}{self.system_to_user}"
            f"{{{{ else }}}}{self.before_user_unsystemed}{{{{ end }}}}"
            "{{ range .Messages }}"
            f'{{{{ if eq .Role "user" }}}}{{{{ .Content }}}}{self.after_user}'
            f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}{self.after_answer}'
            "{{ end }}{{ end }}"
        )


def _conversation(*texts: str) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(texts)]


def turn_pieces(template: Any) -> TurnPieces:
    """Cut probe renders of ``template`` into the pieces a Go template joins; refuse what they cannot express."""
    s, u1, a1, u2, a2, u3 = (_MARK.format(name) for name in ("S", "U1", "A1", "U2", "A2", "U3"))
    text = template.render_text(_conversation(u1, a1, u2), system=s, add_generation_prompt=True)
    plain = template.render_text(_conversation(u1, a1, u2), add_generation_prompt=True)
    try:
        before_system, rest = _cut(text, s)
        system_to_user, rest = _cut(rest, u1)
        after_user, rest = _cut(rest, a1)
        after_answer, last = _cut(rest, u2)
        before_unsystemed = _cut(plain, u1)[0]
    except ValueError:
        raise _refusal(template, "the system text or a message does not appear in order in its render") from None
    pieces = TurnPieces(before_system, system_to_user, before_unsystemed, after_user, after_answer)
    if last != after_user:
        raise _refusal(template, "its generation prompt differs from the assistant header between turns")
    longer = _conversation(u1, a1, u2, a2, u3)
    for system in (s, ""):
        if pieces.render(system, longer) != template.render_text(longer, system=system, add_generation_prompt=True):
            raise _refusal(template, "its turns are not the same text at every position of a conversation")
    return pieces


def _cut(text: str, marker: str) -> tuple[str, str]:
    before, found, after = text.partition(marker)
    if not found:
        raise ValueError(marker)
    return before, after


def _refusal(template: Any, why: str) -> ConfigError:
    return ConfigError(
        f"export_ollama cannot write template '{template.name}' as an Ollama template ({why}); set template= to one "
        "that can (e.g. chatml), or export without export_ollama and write the Modelfile's TEMPLATE by hand"
    )


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ConfigError(f'export_ollama: the text {text[:40]!r} holds """, which a Modelfile cannot quote; change it')
    return f'"""{text}"""'


def write_modelfile(folder: Path, template: Any, tokenizer: Any, *, system: str | None = None) -> Path:
    """Write ``folder/Modelfile`` for the exported model in ``folder``."""
    pieces = turn_pieces(template)
    stops = list(dict.fromkeys([*template.stop_words, *([tokenizer.eos_token] if tokenizer.eos_token else [])]))
    system = system if system is not None else template.default_system
    lines = ["FROM .", "", f"TEMPLATE {_quoted(pieces.go_template())}", ""]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    if system:
        lines += ["", f"SYSTEM {_quoted(system)}"]
    path = folder / MODELFILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
