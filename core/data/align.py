"""The data worker's third step, align: raw rows of one data set to standard records.

The data set's format names an aligner plugin (or every registered aligner is asked to claim
the columns); rows are aligned with ``Dataset.map`` so the work is cached and can use several
processes. Rows an aligner skips are counted per reason and logged, never dropped silently.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import datasets
from datasets import Dataset, IterableDataset, Value

from factory.config import RunConfig
from factory.data.formats import BadRow, SkipRow
from factory.data.record import RECORD_FEATURES, RECORD_KEYS, empty_record, fill_placeholders, first_turn
from factory.data.resolve import DatasetSpec
from factory.errors import DataError, PluginError, did_you_mean, one_of
from factory.plugins import PluginManager

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset
SKIP = "_skip"  # transient column: why a row is dropped ("" to keep it)


def align(
    raw: AnyDataset, spec: DatasetSpec, cfg: RunConfig, manager: PluginManager, dropped: dict[str, dict[str, int]]
) -> AnyDataset:
    """Standard records of ``raw``; rows an aligner skips are counted into ``dropped[spec.name]``."""
    aligner = _aligner(spec, manager) if spec.formatting else None
    columns, first = _peek(raw, spec)
    if aligner is None:
        spec = detect_format(spec, columns, first, manager)
        aligner = _aligner(spec, manager)
    expected = sorted(c for c in aligner.columns(spec) if c)
    missing = [c for c in expected if c not in columns]
    if missing:
        raise DataError(
            f"row 1 of {spec.where} has no column '{missing[0]}'{did_you_mean(missing[0], columns)} "
            f"(it has {', '.join(columns) or 'no columns'}); the {spec.formatting} format of data set '{spec.name}' "
            f"expects the columns {', '.join(expected)}, so rename the column or map it under columns in the descriptor"
        )
    align = functools.partial(
        _align_batch,
        aligner=aligner,
        spec=spec,
        placeholders={**spec.placeholders, **cfg.placeholders},
        expects=f"the {spec.formatting} format expects the columns {', '.join(expected)}",
    )
    features = datasets.Features({**RECORD_FEATURES, SKIP: Value("string")})
    if isinstance(raw, IterableDataset):
        records = raw.map(align, with_indices=True, batched=True, remove_columns=columns, features=features)
        return _resample(records.filter(_kept, input_columns=SKIP).remove_columns(SKIP), spec, cfg.seed)
    workers = cfg.preprocessing_num_workers
    records = raw.map(
        align,
        with_indices=True,
        batched=True,
        remove_columns=columns,
        features=features,
        num_proc=min(workers, len(raw)) if workers and workers > 1 else None,
        desc=f"aligning {spec.name}",
    )
    reasons = [reason for reason in records[SKIP]]
    counts = Counter(reason for reason in reasons if reason)
    if counts:
        dropped[spec.name] = dict(counts)
        summary = ", ".join(f"{reason} ({n})" for reason, n in counts.most_common())
        if sum(counts.values()) == len(records):
            raise DataError(
                f"data set '{spec.name}' is empty after filtering: all {len(records)} rows were dropped as {summary}; "
                f"check its format ({spec.formatting}) and role tags, or fix the rows"
            )
        logger.warning(
            "dropped %d of %d rows of data set '%s': %s", sum(counts.values()), len(records), spec.name, summary
        )
        records = records.select([i for i, reason in enumerate(reasons) if not reason])
    return _resample(records.remove_columns(SKIP), spec, cfg.seed)


def _aligner(spec: DatasetSpec, manager: PluginManager) -> Any:
    names = manager.names("aligners")
    if spec.formatting not in names:
        source = f" in {spec.descriptor}" if spec.descriptor else ""
        raise DataError(
            f"data set '{spec.name}'{source} has the unknown format '{spec.formatting}'"
            f"{did_you_mean(str(spec.formatting), names)} (available: {one_of(names)})"
        )
    return manager.load("aligners", spec.formatting)


def _peek(raw: AnyDataset, spec: DatasetSpec) -> tuple[list[str], dict[str, Any] | None]:
    """The column names and first row (streamed data sets only know them once read)."""
    if isinstance(raw, Dataset):
        if len(raw) == 0:
            raise DataError(f"data set '{spec.name}' ({spec.where}) holds no rows; give a file with data")
        return list(raw.column_names), raw[0]
    first = next(iter(raw.take(1)), None)
    if first is None:
        raise DataError(f"data set '{spec.name}' ({spec.where}) holds no rows; give a file with data")
    return list(raw.column_names or first), first


def _kept(reason: str) -> bool:
    return not reason


def _align_batch(
    batch: Mapping[str, list[Any]],
    indices: list[int],
    *,
    aligner: Any,
    spec: DatasetSpec,
    placeholders: Mapping[str, str],
    expects: str,
) -> dict[str, list[Any]]:
    """Align a batch of raw rows (a top-level function so ``datasets`` can hash and pickle it)."""
    out: dict[str, list[Any]] = {key: [] for key in (*RECORD_KEYS, SKIP)}
    names = list(batch)
    for j, index in enumerate(indices):
        row = {name: batch[name][j] for name in names}
        reason = ""
        try:
            record = aligner.align(row, spec)
        except SkipRow as exc:
            record, reason = empty_record(), str(exc) or "unusable rows"
        except BadRow as exc:
            raise DataError(f"row {index + 1} of {spec.where}: {exc}; {expects}") from None
        if not isinstance(record, dict) or set(record) != set(RECORD_KEYS):
            got = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise PluginError(
                f"aligner '{spec.formatting}' returned {got} instead of the standard record keys "
                f"{', '.join(RECORD_KEYS)}; start from factory.data.record.empty_record()"
            )
        fill_placeholders(record, placeholders)
        for key in RECORD_KEYS:
            out[key].append(record[key])
        out[SKIP].append(reason)
    return out


def _resample(records: AnyDataset, spec: DatasetSpec, seed: int) -> AnyDataset:
    """Apply a descriptor's ``num_samples``: a random subset, or repeats when it asks for more rows."""
    wanted = spec.num_samples
    if wanted is None:
        return records
    if isinstance(records, IterableDataset):
        return records.repeat(None).take(wanted)
    import numpy as np

    rng = np.random.default_rng(seed)
    total = len(records)
    order = np.concatenate([rng.permutation(total) for _ in range(wanted // total + 1)])[:wanted]
    return records.select(order.tolist())


def detect_format(
    spec: DatasetSpec, column_names: list[str], first_row: Mapping[str, Any] | None, manager: Any
) -> DatasetSpec:
    """Fill in the format of a data set given by path or hub id: every registered aligner is asked.

    Aligners with a ``detect`` method are asked in order of their ``priority`` (highest first,
    then by name); the first that recognises the columns names the format, so a third-party
    aligner can claim a format of its own.
    """
    aligners = []
    for impl in manager.implementations("aligners"):
        if impl.unavailable_reason() is None:
            aligner = impl.load()
            if callable(getattr(aligner, "detect", None)):
                aligners.append((-getattr(aligner, "priority", 0), impl.name, aligner))
    for _, name, aligner in sorted(aligners, key=lambda entry: entry[:2]):
        columns = aligner.detect(column_names, first_row)
        if columns is not None:
            ranking = "chosen" in columns and "rejected" in columns
            return replace(spec, formatting=name, ranking=ranking, columns=dict(columns))
    turns = next((c for c in ("messages", "conversations") if c in column_names), None)
    turn = first_turn(first_row, turns) if turns else None
    if turn is not None:
        raise DataError(
            f"cannot tell the format of {spec.where}: the turns of column '{turns}' have keys "
            f"{', '.join(sorted(turn))}, which no installed data format reads (openai: role/content, sharegpt: "
            "from/value); describe the data set with its tags in a datasets.yaml in dataset_dir"
        )
    raise DataError(
        f"cannot tell the format of {spec.where} from its columns ({', '.join(column_names) or 'none'}); "
        "expected instruction/output (alpaca), conversations (sharegpt), messages (openai) or text, "
        "or describe it in a datasets.yaml in dataset_dir"
    )
