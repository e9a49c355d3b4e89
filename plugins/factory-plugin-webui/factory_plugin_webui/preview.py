"""What the Train tab shows about its model and data: model type, the template ``auto`` picks, data sets, rows.

Rows are tokenized by the same code a training run uses (template, ``cutoff_len``, trained
spans), then decoded; the trained spans are highlighted. Only the tokenizer loads, never weights.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from factory.plugin_api import (
    ALIASES,
    BUILTIN_DATASETS,
    IGNORE_INDEX,
    FactoryError,
    dataset_specs,
    detect_kind,
    detect_template,
    get_template,
    load_records,
    load_tokenizer,
    model_type_of,
    row_pieces,
    tokenize_dataset,
)


def model_summary(cfg: Any) -> str:
    """``model type llama · template auto: the tokenizer's own chat template (...)`` or the one sentence why not."""
    try:
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        manager = cfg.manager()
        template = get_template(cfg.template, tokenizer, manager)
    except FactoryError as exc:
        return str(exc)
    model_type = model_type_of(tokenizer) or "unknown"
    picked = getattr(template, "name", cfg.template)
    what = getattr(template, "description", "") or picked
    line = f"model type: {model_type} · template {cfg.template} → {picked}"
    if picked == "auto":
        detected = detect_template(tokenizer, manager)
        line += f" ({what}" + (f"; packaged family: {detected})" if detected else ")")
    return line


def dataset_names(dataset_dir: str | None) -> list[str]:
    """The data sets the page offers: those of ``dataset_dir``'s descriptor (dataset_info.json...) and the built-ins."""
    names: list[str] = []
    if dataset_dir and Path(dataset_dir).expanduser().exists():
        try:
            names += sorted(dataset_specs(Path(dataset_dir).expanduser()))
        except FactoryError:
            pass  # a broken descriptor is reported by the preview and by Start, with its sentence
    names += [name for name in sorted(dataset_specs(BUILTIN_DATASETS)) if name not in names]
    return names


def model_choices() -> list[str]:
    """The registered model aliases (any path or cached hub id may be typed too)."""
    return sorted(ALIASES)


def _spans(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    out, start = [], 0
    trained = [label != IGNORE_INDEX for label in labels]
    for end in range(1, len(ids) + 1):
        if end == len(ids) or trained[end] != trained[start]:
            text = html.escape(tokenizer.decode(ids[start:end], skip_special_tokens=False))
            out.append(
                f'<mark class="trained">{text}</mark>' if trained[start] else f'<span class="prompt">{text}</span>'
            )
            start = end
    return "".join(out)


def preview_html(cfg: Any, n: int = 3) -> str:
    """The first ``n`` rows of the config's first data set as training sees them, trained spans in ``<mark>``."""
    try:
        manager = cfg.manager()
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        template = get_template(cfg.template, tokenizer, manager)
        records = load_records(cfg.datasets[0], cfg, manager)
        kind = detect_kind(records, manager)
        rows = tokenize_dataset(records, tokenizer, template, cfg, kind, manager=manager).dataset
        data_kind = manager.load("data_kinds", kind)
    except FactoryError as exc:
        return f'<p class="error">{html.escape(str(exc))}</p>'
    parts = [
        f"<p>{html.escape(cfg.datasets[0])} · {kind} data · {len(rows)} rows · "
        '<mark class="trained">trained text</mark> is highlighted</p>'
    ]
    for index in range(min(n, len(rows))):
        pieces = row_pieces(rows[index], data_kind)  # the data kind's own view of a row
        total = sum(len(ids) for _, ids, _ in pieces)
        body = "".join(
            (f"<b>{title}</b><br>" if title else "") + _spans(tokenizer, ids, labels) for title, ids, labels in pieces
        )
        parts.append(f'<div class="row"><b>example {index + 1} · {total} tokens</b><pre>{body}</pre></div>')
    return "\n".join(parts)
