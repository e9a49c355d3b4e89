"""``factory data preview``: what a model will see of a data set, and what it learns from.

A tool above the rooms (it needs a model's tokenizer and the data worker), used by the CLI and
the web UI.

The first examples are shown as tokenized for training (after the chat template and
``cutoff_len``), decoded back to text with the trained spans marked, with their token counts;
then a length summary of the whole data set. A wrong template, format or ``cutoff_len`` shows
here before any training starts. Only the tokenizer is loaded, never the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from factory.config import RunConfig
from factory.data.processing import DataStats, tokenize_dataset
from factory.data.tokenize import IGNORE_INDEX
from factory.errors import ConfigError
from factory.model.aliases import ALIASES, resolve_alias

TRAINED = ("⟦", "⟧")  # marks trained text where there are no colours (not a terminal)
TRAINED_STYLE = "bold green"
PROMPT_STYLE = "dim"


def load_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    """Just the tokenizer of a model alias, folder, GGUF file or locally cached hub id (fast, no weights)."""
    from transformers import AutoTokenizer

    path = resolve_alias(source) if source in ALIASES else Path(source)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if path.is_file() and path.suffix == ".gguf":
        path, kwargs["gguf_file"] = path.parent, path.name
    elif not path.is_dir():
        kwargs["local_files_only"] = True
    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load a tokenizer from model '{source}' ({str(exc).splitlines()[0]}); give a model folder, "
            f"a GGUF file, a hub id in the local cache or an alias ({', '.join(ALIASES)})"
        ) from None


def detect_kind(records: Any, manager: Any) -> str:
    """The data kind a data set's standard records are made for: the registered kind that claims its first record most specifically."""
    first = next(iter(records))
    claims = []
    for name in manager.names("data_kinds"):
        kind = manager.load("data_kinds", name)
        if hasattr(kind, "detect"):
            claims.append((kind.detect(first), name))
    score, name = max(claims, default=(0, "supervised"))
    return name if score > 0 else "supervised"


def row_pieces(row: dict, kind: Any) -> list[tuple[str, list[int], list[int]]]:
    """(title, ids, labels) of the parts of one tokenized row (the kind's own view, else its ids and labels)."""
    if hasattr(kind, "pieces"):
        return kind.pieces(row)
    return [("", row["input_ids"], row.get("labels", [IGNORE_INDEX] * len(row["input_ids"])))]


def render_tokens(tokenizer: Any, ids: list[int], labels: list[int], *, styled: bool) -> Text:
    """Decoded tokens with the trained runs styled (``styled``) or wrapped in ⟦ ⟧."""
    trained = np.asarray(labels) != IGNORE_INDEX
    bounds = [0, *(np.flatnonzero(trained[1:] != trained[:-1]) + 1).tolist(), len(ids)]
    text = Text()
    for start, end in zip(bounds, bounds[1:]):
        if start == end:
            continue
        piece = tokenizer.decode(ids[start:end], skip_special_tokens=False)
        if not trained[start]:
            text.append(piece, style=PROMPT_STYLE if styled else None)
        elif styled:
            text.append(piece, style=TRAINED_STYLE)
        else:
            text.append(TRAINED[0] + piece + TRAINED[1])
    return text


def _summary(console: Console, stats: DataStats) -> None:
    dropped = sum(stats.dropped.values())
    console.print("[bold]summary[/bold]")
    console.print(f"  rows         {stats.rows} ({stats.kept} kept, {stats.truncated} truncated, {dropped} dropped)")
    for reason, count in sorted(stats.dropped.items(), key=lambda kv: -kv[1]):
        console.print(f"  dropped      {count} because {escape(reason)}")
    console.print(f"  tokens/row   min {stats.length_min} · median {stats.length_median:g} · max {stats.length_max}")
    console.print(
        f"  over cutoff  {100 * stats.over_cutoff:.1f}% of rows are longer than cutoff_len {stats.cutoff_len}"
    )


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No datasets progress bars between the examples (they would interleave with the output)."""
    import datasets

    was_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def preview(cfg: RunConfig, *, n: int = 3, console: Console | None = None) -> DataStats:
    """Print ``n`` tokenized examples of the config's data set and its length summary; returns the statistics."""
    from factory.data.template import get_template
    from factory.data.worker import load_records

    if n < 0:
        raise ConfigError(f"-n {n} is negative; give the number of examples to show (e.g. -n 3)")
    dataset = cfg.datasets[0]
    console = console or Console()
    styled = console.is_terminal
    manager = cfg.manager()
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    chat_template = get_template(cfg.template, tokenizer, manager)
    with _quiet_progress():
        records = load_records(dataset, cfg, manager)
        kind = detect_kind(records, manager)
        tokenized = tokenize_dataset(records, tokenizer, chat_template, cfg, kind, manager=manager)
    assert tokenized.stats is not None  # preview never streams
    console.print(
        f"[bold]{escape(dataset)}[/bold] · {kind} data · template {escape(cfg.template)} · "
        f"tokenizer {escape(cfg.model)} · cutoff_len {cfg.cutoff_len}",
        soft_wrap=True,
    )
    if not styled:
        console.print(f"trained text is marked {TRAINED[0]}like this{TRAINED[1]}")
    rows = tokenized.dataset
    for index in range(min(n, len(rows))):
        row = rows[index]
        pieces = row_pieces(row, manager.load("data_kinds", kind))
        total = sum(len(ids) for _, ids, _ in pieces)
        trained = sum(int((np.asarray(labels) != IGNORE_INDEX).sum()) for _, _, labels in pieces)
        console.rule(f"example {index + 1} · {total} tokens, {trained} trained", style="cyan")
        for title, ids, labels in pieces:
            if title:
                console.print(f"[bold]{title}[/bold] ({len(ids)} tokens)")
            console.print(render_tokens(tokenizer, ids, labels, styled=styled), soft_wrap=True)
    console.rule(style="cyan")
    _summary(console, tokenized.stats)
    return tokenized.stats
