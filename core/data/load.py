"""The data worker's second step, load: the raw rows of one resolved data set.

Files are read by ``datasets`` packaged builders (json, csv, parquet, text, arrow, saved data
sets), hub data sets through ``datasets``' hub loader; ``max_samples`` is applied here so later
steps never touch rows the run will not use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDataset

from factory.data import resolve as registry
from factory.data.resolve import DatasetSpec
from factory.errors import DataError, did_you_mean

AnyDataset = Dataset | IterableDataset


def load(spec: DatasetSpec, *, streaming: bool, max_samples: int | None) -> AnyDataset:
    """The raw rows of ``spec`` (the first ``max_samples`` of them when set); an empty data set is refused."""
    raw = _load_raw(spec, streaming)
    if not isinstance(raw, IterableDataset) and len(raw) == 0:
        raise DataError(f"data set '{spec.name}' ({spec.where}) has no rows; add rows to it or choose another data set")
    if max_samples is not None:
        raw = (
            raw.take(max_samples) if isinstance(raw, IterableDataset) else raw.select(range(min(max_samples, len(raw))))
        )
    return raw


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
            return datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", streaming=streaming
            )
    except Exception as exc:
        raise DataError(_read_problem(files, builder, exc)) from None


def _data_files(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name not in registry.DESCRIPTOR_FILES
        and p.suffix.lower() in registry.FILE_TYPES
    )
    if not files:
        raise DataError(
            f"folder {folder} holds no data files ({', '.join(registry.FILE_TYPES)}); point at a file or another folder"
        )
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
                return (
                    f"data set file {path} holds an empty JSON list, no rows; add rows to it or point at another file"
                )
            bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
            if bad is None:
                return None
            return (
                f"{path} row {bad + 1} is a JSON {type(data[bad]).__name__}, not an object with columns; fix that row"
            )
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
                    raise DataError(
                        f"hub data set '{spec.hub}' has no split '{spec.split}' ({exc}); set split in its descriptor"
                    ) from None
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
