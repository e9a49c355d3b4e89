"""The data worker's last steps over a data set: render and tokenize per data kind, pack, and count what happened.

Rows are rendered through the chat template and tokenized by the data kind's tokenize function
(:mod:`factory.data.tokenize`), then packed or chunked (:mod:`factory.data.pack`). Each step is a ``datasets.map`` (with
``preprocessing_num_workers`` processes) whose result ``datasets`` caches next to the data under
a fingerprint of its inputs, so a second identical run reads the cache and tokenizes nothing.
Every row that cannot be used is counted with its reason in :class:`DataStats` and logged, so
no row is lost silently.

Each data kind (``factory.data.kinds``; plugins register more) declares its row columns and
tokenize function; token columns are int32 lists, ``labels`` are ``-100`` where no loss. The
core's kinds: ``supervised`` (``input_ids``, ``labels``) and ``pretrain`` (``input_ids``, then
``labels`` in ``cutoff_len`` chunks), each with ``position_ids`` when packed.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset

from factory.config import RunConfig
from factory.data import pack as packing_steps
from factory.data import tokenize as tokenize_steps
from factory.data.kinds import data_kind as lookup_kind
from factory.data.record import RECORD_KEYS
from factory.data.tokenize import DROPPED, TRUNCATED, TokenizeOptions, output_features
from factory.errors import ConfigError, DataError
from factory.plugins import PluginManager

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset
PACKING_WINDOW = 10_000  # examples bin-packed together (one map batch): larger packs tighter
METADATA = ["_status", "_length"]
# The tokenization code itself is part of every cache fingerprint: editing it invalidates old caches.
CODE_VERSION = hashlib.sha256(
    b"".join(Path(module.__file__).read_bytes() for module in (tokenize_steps, packing_steps))
).hexdigest()[:16]


@functools.cache
def _kind_version(kind_type: type) -> str:
    """A hash of the module defining a data kind (a plugin's too), so editing its tokenization invalidates caches."""
    source = inspect.getsourcefile(kind_type)
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12] if source else ""


__all__ = ["BatchLayout", "DataStats", "batch_layout", "TokenizedData", "packing_enabled", "tokenize_dataset"]


@dataclass
class DataStats:
    """What tokenization did to one data set (lengths are tokens before truncation)."""

    kind: str
    cutoff_len: int
    rows: int
    kept: int
    truncated: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    length_min: int = 0
    length_median: float = 0.0
    length_max: int = 0
    over_cutoff: float = 0.0  # share of kept rows longer than cutoff_len (truncated, or split for pretrain)
    packed: bool = False
    sequences: int = 0  # training rows after packing / chunking

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        reasons = "; ".join(
            f"{n} because {reason}" for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])
        )
        return (
            f"{self.rows} rows: {self.kept} kept, {self.truncated} truncated, {dropped} dropped"
            + (f" ({reasons})" if dropped else "")
            + f"; tokens per row min {self.length_min} / median {self.length_median:g} / max {self.length_max}"
            f"; {100 * self.over_cutoff:.1f}% over cutoff_len {self.cutoff_len}"
            + (f"; {self.sequences} {'packed ' if self.packed else ''}training rows" if self.sequences else "")
        )


@dataclass
class TokenizedData:
    """Training rows and their statistics (``None`` when streaming: rows are only seen while training)."""

    dataset: AnyDataset
    stats: DataStats | None


@dataclass(frozen=True)
class BatchLayout:
    """How batches are built for a run: the config's choice, overruled by the model's facts (see factory.model.facts)."""

    padding_free: bool
    packing: bool | None  # None: the data kind decides (on for pre-training)
    restarts: bool = True  # the model keeps examples apart by restarting position ids (packed rows are possible)


def batch_layout(cfg: RunConfig, facts: Any = None) -> BatchLayout:
    """The config's layout, with what the patches decided (a ``ModelFacts``) taking precedence."""
    decided = getattr(facts, "padding_free", None)
    return BatchLayout(padding_free=cfg.padding_free if decided is None else decided, packing=cfg.packing)


def packing_enabled(cfg: RunConfig, kind: Any, packing: bool | None = None, name: str | None = None) -> bool:
    """Packing is on for pre-training and off otherwise, unless the config (or the run's layout) says so.

    ``kind`` is a data kind (or its name, with the config's plugins); rows of a kind that is not
    ``packable`` (preference pairs) are never packed, and asking for it is one sentence.
    """
    if isinstance(kind, str):
        name, kind = kind, lookup_kind(cfg.manager(), kind, cfg.stage)
    packing = cfg.packing if packing is None else packing
    if not getattr(kind, "packable", False):
        if packing:
            raise ConfigError(
                f"packing=true does not apply to {name or 'this'} data (stage '{cfg.stage}'); set packing: false"
            )
        return False
    return bool(getattr(kind, "chunks", False)) if packing is None else bool(packing)


def _apply(data: AnyDataset, step: str, function: Any, cfg: RunConfig, desc: str, **kwargs: Any) -> AnyDataset:
    """``data.map`` or ``data.filter`` (``step``), batched, with worker processes where the data set allows."""
    if isinstance(data, IterableDataset):
        return getattr(data, step)(function, batched=True, **kwargs)
    workers = cfg.preprocessing_num_workers
    num_proc = min(workers, len(data)) if workers and workers > 1 else None
    return getattr(data, step)(function, batched=True, num_proc=num_proc, desc=desc, **kwargs)


def _usable(statuses: list[str]) -> list[bool]:
    return [not status.startswith(DROPPED) for status in statuses]


def _count(tokenized: Dataset, kind: str, cutoff_len: int) -> DataStats:
    statuses = tokenized["_status"]
    lengths = np.asarray(tokenized["_length"], dtype=np.int64)
    usable = np.asarray(_usable(statuses), dtype=bool)
    counts = Counter(statuses)
    kept_lengths = lengths[usable]
    return DataStats(
        kind=kind,
        cutoff_len=cutoff_len,
        rows=len(statuses),
        kept=int(usable.sum()),
        truncated=counts[TRUNCATED],
        dropped={status.removeprefix(DROPPED): n for status, n in counts.items() if status.startswith(DROPPED)},
        length_min=int(kept_lengths.min()) if len(kept_lengths) else 0,
        length_median=float(np.median(kept_lengths)) if len(kept_lengths) else 0.0,
        length_max=int(kept_lengths.max()) if len(kept_lengths) else 0,
        over_cutoff=float((kept_lengths > cutoff_len).mean()) if len(kept_lengths) else 0.0,
    )


def tokenize_dataset(
    records: AnyDataset,
    tokenizer: Any,
    template: Any,
    cfg: RunConfig,
    data_kind: str,
    packing: bool | None = None,
    manager: PluginManager | None = None,
) -> TokenizedData:
    """Tokenize standard records for ``data_kind`` (a registered data kind) and pack them when :func:`packing_enabled` says so."""
    kind = lookup_kind(manager or cfg.manager(), data_kind, cfg.stage)
    packing = packing_enabled(cfg, kind, packing, data_kind)
    options = TokenizeOptions(
        kind=data_kind,
        cutoff_len=cfg.cutoff_len,
        train_on=cfg.train_on,
        version=f"{CODE_VERSION}-{_kind_version(type(kind))}",
    )
    if hasattr(template, "configure"):  # the run's reasoning settings become the template's defaults
        template = template.configure(reasoning=cfg.reasoning, enable_thinking=cfg.enable_thinking)
    columns = records.column_names or list(RECORD_KEYS)
    tokenized = _apply(
        records,
        "map",
        kind.tokenize,
        cfg,
        f"tokenizing ({data_kind})",
        fn_kwargs={"tokenizer": tokenizer, "template": template, "options": options},
        remove_columns=columns,
        features=output_features(kind.columns),
    )
    stats = None if isinstance(tokenized, IterableDataset) else _count(tokenized, data_kind, cfg.cutoff_len)
    if stats is not None and stats.dropped:
        if not stats.kept:
            reasons = ", ".join(f"{n} because {reason}" for reason, n in stats.dropped.items())
            raise DataError(
                f"none of the {stats.rows} rows can be used as {data_kind} data for stage '{cfg.stage}' "
                f"({reasons}); give data in a format that fits the stage"
            )
        logger.warning("some %s rows cannot be used: %s", data_kind, stats.summary())
    if stats is None or stats.dropped:
        tokenized = _apply(tokenized, "filter", _usable, cfg, "dropping unusable rows", input_columns="_status")
    rows = tokenized.remove_columns(METADATA)
    if getattr(kind, "chunks", False):
        rows = _apply(
            rows,
            "map",
            packing_steps.chunk_texts,
            cfg,
            "chunking",
            fn_kwargs={"cutoff_len": cfg.cutoff_len, "concatenate": packing},
            remove_columns=["input_ids"],
            features=packing_steps.packed_features(packing),
            batch_size=PACKING_WINDOW,
        )
    elif packing:
        rows = _apply(
            rows,
            "map",
            packing_steps.pack_examples,
            cfg,
            "packing",
            fn_kwargs={"cutoff_len": cfg.cutoff_len},
            remove_columns=["input_ids", "labels"],
            features=packing_steps.packed_features(True),
            batch_size=PACKING_WINDOW,
        )
    if stats is not None:
        stats.packed = packing
        stats.sequences = len(rows)
    return TokenizedData(rows, stats)
