"""The data worker's first step, resolve: from a data set value to the :class:`DatasetSpec` it names.

The descriptors that name data sets, and what a data set value points at.

A descriptor maps a name to a file (or hub id), its format, and how its columns and role tags
map to factory's roles. Descriptors are looked up in ``dataset_dir`` (``datasets.yaml``,
``datasets.yml``, ``datasets.json``, or LLaMA-Factory's ``dataset_info.json``, read unchanged)
and then among the built-in data sets shipped in ``factory/data/builtin``. A data set value may
also be a file or folder path, or a hub id; their format is then told from their columns.

This module imports neither ``datasets`` nor anything heavy: resolving a name is cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from factory.errors import DataError, did_you_mean

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

# Our descriptor files first, then LLaMA-Factory's (read exactly as LLaMA-Factory writes it).
DESCRIPTOR_FILES = ("datasets.yaml", "datasets.yml", "datasets.json", "dataset_info.json")
LLAMAFACTORY_DESCRIPTOR = "dataset_info.json"

# File extension -> the `datasets` packaged builder that reads it.
FILE_TYPES: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}
BUILDERS = ("arrow", "csv", "json", "parquet", "text")

# Column roles (LLaMA-Factory's vocabulary plus ``text`` for plain-text data).
COLUMN_ROLES = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "chosen",
    "rejected",
    "kto_tag",
    "text",
    "images",
    "videos",
    "audios",
)
MEDIA_ROLES = ("images", "videos", "audios")
TAG_DEFAULTS: dict[str, str] = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}

# Descriptor keys: LLaMA-Factory's, plus short aliases and factory's own additions.
_KEY_ALIASES = {"file": "file_name", "format": "formatting", "hub": "hf_hub_url"}
_KNOWN_KEYS = {
    "file_name",
    "formatting",
    "ranking",
    "columns",
    "tags",
    "hf_hub_url",
    "ms_hub_url",
    "om_hub_url",
    "script_url",
    "subset",
    "split",
    "folder",
    "num_samples",
    "file_type",
    "placeholders",
    "description",
}


@dataclass
class DatasetSpec:
    """Everything the loader and the aligners need to know about one data set."""

    name: str
    formatting: str | None = None  # aligner name; None: tell from the columns once loaded
    file: str | None = None  # local file or folder
    hub: str | None = None  # hub id
    unsupported_source: str | None = None  # why a described data set cannot be fetched here
    file_type: str | None = None  # a builder of BUILDERS; None: from the extension
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    ranking: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    placeholders: dict[str, str] = field(default_factory=dict)
    descriptor: str | None = None  # the descriptor file this came from

    @property
    def where(self) -> str:
        """How messages name the data: its file, or its hub id."""
        return self.file or self.hub or self.name

    @property
    def kto(self) -> bool:
        return "kto_tag" in self.columns

    def column(self, role: str, default: str | None = None) -> str | None:
        """The raw column that plays ``role`` (the descriptor's mapping, else ``default``)."""
        return self.columns.get(role, default)

    def tag(self, name: str) -> str:
        return self.tags.get(name, TAG_DEFAULTS[name])


# -- descriptors -----------------------------------------------------------------------------


def _read_descriptor(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"descriptor {path} is not valid JSON at line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"descriptor {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"descriptor {path} must map data set names to descriptions, not hold a {type(data).__name__}")
    return data


def spec_from_entry(name: str, entry: Any, descriptor: Path) -> DatasetSpec:
    """Turn one descriptor entry (LLaMA-Factory's keys or factory's aliases) into a spec."""
    strict = descriptor.name != LLAMAFACTORY_DESCRIPTOR  # LLaMA-Factory may add keys we do not use
    where = f"data set '{name}' in {descriptor}"
    if not isinstance(entry, Mapping):
        raise DataError(f"{where} must be a mapping of keys (file, format, columns...), not {entry!r}")
    entry = {_KEY_ALIASES.get(key, key): value for key, value in entry.items()}
    unknown = [key for key in entry if key not in _KNOWN_KEYS]
    if strict and unknown:
        valid = sorted(_KNOWN_KEYS | set(_KEY_ALIASES))
        raise DataError(
            f"{where} has the unknown key '{unknown[0]}'{did_you_mean(unknown[0], valid)} (keys: {', '.join(valid)})"
        )
    columns = _string_map(entry.get("columns"), where, "columns", COLUMN_ROLES)
    tags = _string_map(entry.get("tags"), where, "tags", tuple(TAG_DEFAULTS))
    formatting = entry.get("formatting") or "alpaca"
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise DataError(f"{where} has ranking: {ranking!r}; write true or false")
    if formatting == "alpaca" and set(columns) == {"prompt"} and not ranking:
        # LLaMA-Factory describes pre-training text as alpaca data with only a prompt column.
        formatting, columns = "text", {"text": columns["prompt"]}
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples <= 0):
        raise DataError(f"{where} has num_samples: {num_samples!r}; give a positive whole number")
    file_type = entry.get("file_type")
    if file_type is not None:
        file_type = {"txt": "text", "jsonl": "json"}.get(file_type, file_type)
        if file_type not in BUILDERS:
            raise DataError(
                f"{where} has file_type '{file_type}'{did_you_mean(str(file_type), BUILDERS)} (available: {', '.join(BUILDERS)})"
            )
    spec = DatasetSpec(
        name=name,
        formatting=str(formatting),
        file_type=file_type,
        subset=entry.get("subset"),
        split=entry.get("split") or "train",
        folder=entry.get("folder"),
        num_samples=num_samples,
        ranking=ranking,
        columns=columns,
        tags=tags,
        placeholders=_string_map(entry.get("placeholders"), where, "placeholders", None),
        descriptor=str(descriptor),
    )
    if entry.get("file_name"):
        spec.file = str((descriptor.parent / str(entry["file_name"])).expanduser())
    elif entry.get("hf_hub_url"):
        spec.hub = str(entry["hf_hub_url"])
    elif entry.get("ms_hub_url") or entry.get("om_hub_url"):
        hub, url = ("ModelScope", entry["ms_hub_url"]) if entry.get("ms_hub_url") else ("Modelers", entry["om_hub_url"])
        spec.unsupported_source = (
            f"data set '{name}' is only published on {hub} ({url}), which factory does not download from; "
            "download it and set dataset to the path of the local copy"
        )
    elif entry.get("script_url"):
        spec.unsupported_source = (
            f"data set '{name}' is built by the loading script {entry['script_url']}, which datasets no longer runs; "
            "convert it to a JSON, CSV or Parquet file and describe that file instead"
        )
    else:
        raise DataError(f"{where} names no source; give file (or LLaMA-Factory's file_name) or hub (hf_hub_url)")
    return spec


def _string_map(value: Any, where: str, key: str, allowed: tuple[str, ...] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{where} has {key}: {value!r}; it must map names to strings")
    out = {}
    for name, item in value.items():
        if allowed is not None and name not in allowed:
            raise DataError(
                f"{where} maps the unknown {key[:-1] if key.endswith('s') else key} '{name}'"
                f"{did_you_mean(str(name), allowed)} (known: {', '.join(allowed)})"
            )
        if not isinstance(item, str):
            raise DataError(f"{where} has {key}.{name}: {item!r}; give a string")
        out[str(name)] = item
    return out


def descriptor_files(folder: Path) -> list[Path]:
    """The descriptor files of a folder (or the file itself when ``folder`` is a descriptor)."""
    if folder.is_file():
        return [folder]
    return [folder / name for name in DESCRIPTOR_FILES if (folder / name).is_file()]


def read_specs(folder: Path) -> dict[str, DatasetSpec]:
    """Every data set the descriptors of ``folder`` describe, by name."""
    specs: dict[str, DatasetSpec] = {}
    for path in descriptor_files(folder):
        for name, entry in _read_descriptor(path).items():
            if name in specs:
                raise DataError(
                    f"data set '{name}' is described both in {specs[name].descriptor} and in {path}; remove one of them"
                )
            specs[str(name)] = spec_from_entry(str(name), entry, path)
    return specs


# -- resolving a data set value --------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve(value: str, dataset_dir: str | None) -> DatasetSpec:
    """The spec for a data set value: a described name, an existing path, or a hub id."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"data set {value!r} is empty; give a data set name, a file path or a hub id")
    folder = Path(dataset_dir).expanduser() if dataset_dir else None
    if folder is not None and not folder.exists():
        raise DataError(f"dataset_dir '{dataset_dir}' does not exist; give the folder that holds your data sets")
    described = read_specs(folder) if folder is not None else {}
    if value in described:
        return described[value]
    builtin = read_specs(BUILTIN_DIR)
    if value in builtin:
        return builtin[value]
    for candidate in _path_candidates(value, folder):
        if candidate.exists():
            return DatasetSpec(name=value, file=str(candidate.resolve()))
    suffix = Path(value).suffix.lower()
    if _HUB_ID.match(value) and suffix not in FILE_TYPES:
        return DatasetSpec(name=value, hub=value)
    if suffix in FILE_TYPES or "/" in value or "\\" in value or value.startswith((".", "~")):
        places = " or ".join(str(c) for c in _path_candidates(value, folder))
        raise DataError(f"data set file '{value}' does not exist (looked for {places}); check the path")
    names = sorted(set(described) | set(builtin))
    offered = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    place = (
        f"dataset_dir '{dataset_dir}' and the built-in data sets"
        if folder
        else "the built-in data sets (dataset_dir is not set)"
    )
    raise DataError(
        f"unknown data set '{value}'{did_you_mean(value, names)} ({place} offer: {offered}); "
        "give a described name, a file path, or set dataset_dir to a folder with a datasets.yaml or dataset_info.json"
    )


def _path_candidates(value: str, folder: Path | None) -> list[Path]:
    path = Path(value).expanduser()
    candidates = [path]
    if folder is not None and not path.is_absolute():
        candidates.append((folder if folder.is_dir() else folder.parent) / path)
    return candidates


def check_media(spec: DatasetSpec) -> None:
    """Refuse multimodal data sets: the data worker handles text only."""
    media = [role for role in MEDIA_ROLES if role in spec.columns]
    if media:
        raise DataError(
            f"data set '{spec.name}' maps {', '.join(media)} columns, but factory's data worker handles text only; "
            "choose a text data set or remove the media columns from its description"
        )
