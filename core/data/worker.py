"""The data worker, read as its pipeline: resolve -> load -> align -> merge -> split -> render/tokenize -> pack.

Each step is its own module (:mod:`~factory.data.resolve`, :mod:`~factory.data.load`,
:mod:`~factory.data.align`, :mod:`~factory.data.merge`, :mod:`~factory.data.split`, then
:mod:`~factory.data.processing` for rendering and tokenizing per data kind (:mod:`~factory.data.kinds`,
:mod:`~factory.data.tokenize`) and packing (:mod:`~factory.data.pack`)) and hands its result to
the next; this module only calls them in order. :func:`build_datasets` is the one call a
training stage makes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, IterableDataset

from factory.config import RunConfig
from factory.data.align import align
from factory.data.kinds import data_kind as lookup_kind
from factory.data.load import load
from factory.data.merge import merge
from factory.data.processing import BatchLayout, batch_layout, packing_enabled, tokenize_dataset
from factory.data.resolve import check_media, resolve
from factory.data.split import split
from factory.errors import ConfigError
from factory.plugins import PluginManager

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset


@dataclass
class DataBundle:
    """What a stage trains and evaluates on, in standard records."""

    train: AnyDataset
    eval: AnyDataset | None = None
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # data set -> reason -> rows


def records(
    name_or_path: str, cfg: RunConfig, manager: PluginManager, dropped: dict[str, dict[str, int]]
) -> AnyDataset:
    """One data set value through resolve -> load -> align."""
    spec = resolve(name_or_path, cfg.dataset_dir)
    check_media(spec)
    raw = load(spec, streaming=cfg.streaming, max_samples=cfg.max_samples)
    return align(raw, spec, cfg, manager, dropped)


def load_records(name_or_path: str, cfg: RunConfig, manager: PluginManager) -> AnyDataset:
    """One data set in standard records (``max_samples`` applied, unusable rows dropped)."""
    return records(name_or_path, cfg, manager, {})


def load_data(cfg: RunConfig, manager: PluginManager, *, eval_split: bool = True) -> DataBundle:
    """Every data set of the run in standard records, merged, with an evaluation set when asked for."""
    dropped: dict[str, dict[str, int]] = {}
    train = merge(
        [records(name, cfg, manager, dropped) for name in cfg.datasets],
        strategy=cfg.mix_strategy,
        probabilities=cfg.interleave_probs,
        seed=cfg.seed,
    )
    evaluation = None
    if eval_split and cfg.eval_dataset:
        if cfg.val_size:
            raise ConfigError(
                f"both eval_dataset and val_size ({cfg.val_size:g}) are set; evaluate on one: remove val_size or eval_dataset"
            )
        names = [cfg.eval_dataset] if isinstance(cfg.eval_dataset, str) else list(cfg.eval_dataset)
        evaluation = merge([records(name, cfg, manager, dropped) for name in names], strategy="concat", shuffle=False)
    elif eval_split and cfg.val_size:
        train, evaluation = split(train, cfg.val_size, cfg.seed)
    return DataBundle(train, evaluation, dropped)


def build_datasets(
    cfg: RunConfig,
    manager: PluginManager,
    tokenizer: Any,
    template: Any,
    data_kind: str,
    layout: BatchLayout | None = None,
) -> tuple[AnyDataset, AnyDataset | None, Any, dict[str, Any]]:
    """The one call a stage makes: load and merge the data, tokenize (and pack) it, and its collator.

    Returns ``(train, eval or None, collator, stats)``. ``stats`` is JSON-ready: ``train`` and
    ``eval`` hold :meth:`DataStats.to_dict` (``None`` when streaming or absent) and
    ``aligning_dropped`` the rows aligning dropped, per data set and reason. ``layout`` is the run's
    batch layout (:class:`BatchLayout`: the config's, overruled by the patches' facts).
    """
    layout = layout or batch_layout(cfg)
    bundle = load_data(cfg, manager)
    kind = lookup_kind(manager, data_kind, cfg.stage)
    train = tokenize_dataset(bundle.train, tokenizer, template, cfg, data_kind, layout.packing, manager)
    evaluation = (
        None
        if bundle.eval is None
        else tokenize_dataset(bundle.eval, tokenizer, template, cfg, data_kind, layout.packing, manager)
    )
    packing = packing_enabled(cfg, kind, layout.packing, data_kind)
    collator = kind.collator(
        tokenizer, packing=packing, flatten=layout.padding_free and layout.restarts, restarts=layout.restarts
    )
    stats: dict[str, Any] = {"aligning_dropped": bundle.dropped}
    for name, part in (("train", train), ("eval", evaluation)):
        stats[name] = part.stats.to_dict() if part is not None and part.stats is not None else None
        if part is not None and part.stats is not None:
            logger.info("%s data: %s", name, part.stats.summary())
    return train.dataset, None if evaluation is None else evaluation.dataset, collator, stats
