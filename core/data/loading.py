"""Loading and aligning data sets: the first steps of the data worker.

``load_records`` turns one data set value (a described name, a path, a hub id) into standard
records (:mod:`factory.data.record`); ``load_data`` does it for every data set of a run,
merges them and splits off an evaluation set. Files are read by ``datasets`` packaged builders
and aligned with ``Dataset.map`` so the work is cached and can use several processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, Value

from factory.config import RunConfig
from factory.data import registry
from factory.data.aligners import BadRow, SkipRow
from factory.data.merge import merge
from factory.data.record import RECORD_FEATURES, RECORD_KEYS, empty_record, fill_placeholders
from factory.data.registry import DatasetSpec
from factory.errors import ConfigError, DataError, PluginError, did_you_mean, one_of
from factory.plugins import PluginManager

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset
SKIP = "_skip"  # transient column: why a row is dropped ("" to keep it)


@dataclass
class DataBundle:
    """What a stage trains and evaluates on, in standard records."""

    train: AnyDataset
    eval: AnyDataset | None = None
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # data set -> reason -> rows


def load_data(cfg: RunConfig, manager: PluginManager, *, eval_split: bool = True) -> DataBundle:
    """Every data set of the run, aligned and merged, with an evaluation set when asked for."""
    dropped: dict[str, dict[str, int]] = {}
    parts = [_load_one(name, cfg, manager, dropped) for name in cfg.datasets]
    train = merge(parts, strategy=cfg.mix_strategy, probabilities=cfg.interleave_probs, seed=cfg.seed)
    evaluation = None
    if eval_split and cfg.eval_dataset:
        if cfg.val_size:
            raise ConfigError(
                f"both eval_dataset and val_size ({cfg.val_size:g}) are set; evaluate on one: remove val_size or eval_dataset"
            )
        names = [cfg.eval_dataset] if isinstance(cfg.eval_dataset, str) else list(cfg.eval_dataset)
        evaluation = merge([_load_one(name, cfg, manager, dropped) for name in names], strategy="concat", shuffle=False)
    elif eval_split and cfg.val_size:
        train, evaluation = split_eval(train, cfg.val_size, cfg.seed)
    return DataBundle(train, evaluation, dropped)


def load_records(name_or_path: str, cfg: RunConfig, manager: PluginManager) -> AnyDataset:
    """One data set in standard records (``max_samples`` applied, unusable rows dropped)."""
    return _load_one(name_or_path, cfg, manager, {})


def split_eval(data: AnyDataset, val_size: float, seed: int) -> tuple[AnyDataset, AnyDataset]:
    """Split ``val_size`` rows (a fraction below 1, or a count) off ``data`` for evaluation."""
    if val_size >= 1 and val_size != int(val_size):
        raise ConfigError(f"val_size {val_size:g} is neither a fraction below 1 nor a whole number of rows; give e.g. 0.1 or 100")
    if isinstance(data, IterableDataset):
        if val_size < 1:
            raise ConfigError(
                f"val_size {val_size:g} is a fraction, but streamed data has no known length; give a number of rows (e.g. val_size: 100)"
            )
        count = int(val_size)
        return data.skip(count), data.take(count)
    total = len(data)
    count = math.ceil(val_size * total) if val_size < 1 else int(val_size)
    if count >= total:
        raise DataError(f"val_size {val_size:g} takes {count} of the {total} rows and leaves none to train on; lower val_size")
    parts = data.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


# -- one data set ----------------------------------------------------------------------------


def _load_one(name_or_path: str, cfg: RunConfig, manager: PluginManager, dropped: dict[str, dict[str, int]]) -> AnyDataset:
    spec = registry.resolve(name_or_path, cfg.dataset_dir)
    registry.check_media(spec)
    aligner = _aligner(spec, manager) if spec.formatting else None
    raw = _load_raw(spec, cfg.streaming)
    if not isinstance(raw, IterableDataset) and len(raw) == 0:
        raise DataError(f"data set '{spec.name}' ({spec.where}) has no rows; add rows to it or choose another data set")
    if cfg.max_samples is not None:
        raw = raw.take(cfg.max_samples) if isinstance(raw, IterableDataset) else raw.select(range(min(cfg.max_samples, len(raw))))
    columns, first = _peek(raw, spec)
    if aligner is None:
        spec = registry.detect_format(spec, columns, first, manager)
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
        logger.warning("dropped %d of %d rows of data set '%s': %s", sum(counts.values()), len(records), spec.name, summary)
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


# -- reading the raw rows --------------------------------------------------------------------


def _load_raw(spec: DatasetSpec, streaming: bool) -> AnyDataset:
    if spec.unsupported_source:
        raise DataError(spec.unsupported_source)
    if spec.file is None:
        return _load_hub(spec, streaming)
    path = Path(spec.file)
    if not path.exists():
        source = f" (data set '{spec.name}' in {spec.descriptor})" if spec.descriptor else ""
        raise DataError(f"data set file {path}{source} does not exist; check the path or the descriptor's file_name")
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return _load_saved(path, spec, streaming)
    files = _data_files(path) if path.is_dir() else [path]
    builder = spec.file_type or _builder(files, path)
    try:
        with _quiet_builders():
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=streaming)
    except Exception as exc:
        raise DataError(_read_problem(files, builder, exc)) from None


def _data_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in registry.DESCRIPTOR_FILES
        and p.suffix.lower() in registry.FILE_TYPES
    )
    if not files:
        raise DataError(f"folder {folder} holds no data files ({', '.join(registry.FILE_TYPES)}); point at a file or another folder")
    return files


def _builder(files: list[Path], path: Path) -> str:
    kinds = {registry.FILE_TYPES.get(f.suffix.lower()) for f in files}
    if None in kinds:
        raise DataError(
            f"data set file {path} has the unknown format '{path.suffix or '(no extension)'}' "
            f"(available: {', '.join(registry.FILE_TYPES)}); convert it or set file_type in its descriptor"
        )
    if len(kinds) > 1:
        found = ", ".join(sorted({f.suffix for f in files}))
        raise DataError(f"folder {path} mixes data files of different formats ({found}); keep one format per folder")
    return kinds.pop()


def _load_saved(path: Path, spec: DatasetSpec, streaming: bool) -> AnyDataset:
    """A folder written by ``Dataset.save_to_disk`` (or a DatasetDict's, choosing ``spec.split``)."""
    data = datasets.load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if spec.split not in data:
            raise DataError(
                f"saved data set {path} has no split '{spec.split}'{did_you_mean(spec.split, data)} "
                f"(splits: {', '.join(data)}); set split in its descriptor"
            )
        data = data[spec.split]
    return data.to_iterable_dataset() if streaming else data


@contextlib.contextmanager
def _quiet_builders() -> Iterator[None]:
    """Silence the builders' own error log; a failure is reported as one DataError sentence."""
    log = logging.getLogger("datasets.packaged_modules")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _read_problem(files: list[Path], builder: str, exc: Exception) -> str:
    """One sentence saying what is wrong with data files the builder could not read."""
    for path in files:
        if path.stat().st_size == 0 or (path.stat().st_size < 2**20 and not path.read_bytes().strip()):
            return f"data set file {path} is empty; add rows to it or point at another file"
    if builder == "json":
        for path in files:
            problem = _json_problem(path)
            if problem:
                return problem
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else cause.__class__.__name__
    where = files[0] if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    return f"could not read {where} as {builder}: {detail}; check that the file is valid {builder}"


def _json_problem(path: Path) -> str | None:
    """Where a JSON (list of rows) or JSON Lines file breaks, by line number."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            return f"{path} is not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); fix that line"
    else:
        if isinstance(data, dict):
            return None
        if isinstance(data, list):
            if not data:
                return f"data set file {path} holds an empty JSON list, no rows; add rows to it or point at another file"
            bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
            if bad is None:
                return None
            return f"{path} row {bad + 1} is a JSON {type(data[bad]).__name__}, not an object with columns; fix that row"
        return f"{path} holds a JSON {type(data).__name__}, not rows; write a list of objects or JSON Lines"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"{path} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
        if not isinstance(row, dict):
            return f"{path} line {number} holds a JSON {type(row).__name__}, not an object with columns; fix that line"
    return None


# -- the hub ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hub look-ups without network: this machine is offline, so nothing may wait on it.

    ``HF_HUB_OFFLINE=0`` in the environment opts back in to downloads.
    """
    import huggingface_hub.constants as hub_constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip() == "0":
        yield
        return
    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load_hub(spec: DatasetSpec, streaming: bool) -> AnyDataset:
    """A hub data set from the local caches: datasets' own cache, then a downloaded snapshot."""
    kwargs = {"name": spec.subset, "data_dir": spec.folder, "split": spec.split, "streaming": streaming}
    with _offline(), _quiet_builders():
        for source in (spec.hub, _snapshot(spec.hub)):
            if source is None:
                continue
            try:
                return datasets.load_dataset(source, **kwargs)
            except (ConnectionError, FileNotFoundError):  # not cached (DatasetNotFoundError is a FileNotFoundError)
                continue
            except ValueError as exc:
                if "split" in str(exc).lower():
                    raise DataError(f"hub data set '{spec.hub}' has no split '{spec.split}' ({exc}); set split in its descriptor") from None
                raise DataError(f"could not load hub data set '{spec.hub}': {exc}") from None
    described = f" (data set '{spec.name}' in {spec.descriptor})" if spec.descriptor else ""
    raise DataError(
        f"'{spec.hub}'{described} is not a local file or folder nor in the local Hugging Face cache, and this machine is "
        f"offline; download it where there is network (huggingface-cli download --repo-type dataset {spec.hub} --local-dir DIR) "
        "and set dataset to that local copy"
    )


def _snapshot(repo_id: str | None) -> str | None:
    """The folder of a hub data set downloaded with huggingface-cli / snapshot_download, if any."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except Exception:  # not downloaded (or a malformed id): the caller reports the one sentence
        return None

