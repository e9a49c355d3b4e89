"""Run configuration: pydantic models, and the three equal ways in (YAML, key=value, kwargs).

The core's own settings are fields of :class:`RunConfig`. Each plugin contributes an options
model read from its own section (``lora: {rank: 16}`` or ``lora.rank=16``); sections are found
through the plugin manager, so the core never lists plugin options itself. Everything is
validated before any model is loaded, and every error is one sentence naming the key.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from factory import lf_compat
from factory.errors import ConfigError, did_you_mean
from factory.hookspecs import LABELS
from factory.plugins import PluginManager, get_manager


class PluginsConfig(BaseModel):
    """Which plugins take part in a run."""

    model_config = ConfigDict(extra="forbid")

    disable: list[str] = Field(default_factory=list, description="plugin or distribution names to skip")
    prefer: dict[str, str] = Field(
        default_factory=dict,
        description="KIND.NAME -> distribution, to settle a name registered by two plugins",
    )


# Upper bounds on counts and sizes: a number past them is a typo or an attack, and would
# otherwise reach C code (numpy seeds, torch shapes) that fails with an internal error.
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1  # numpy's seed range; transformers.set_seed seeds numpy too


class JobsConfig(BaseModel):
    """What jobs submitted to ``factory serve`` may reach, and how workers run them; set by the operator."""

    model_config = ConfigDict(extra="forbid")

    allow_models: list[str] = Field(
        default_factory=list,
        description="model names or paths a job may evaluate besides the served model (the served model and adapter always are)",
    )
    allow_dirs: list[str] = Field(
        default_factory=list,
        description="folders a job may read benchmark folders, data files and adapters from (task_dir and dataset_dir always are)",
    )
    output_dir: str | None = Field(None, description="where job outputs go, one folder per job; default outputs/jobs")
    keep_finished: int = Field(
        1000, ge=0, le=MAX_COUNT, description="finished jobs kept for listing; older ones are forgotten"
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, le=3600, description="how often a worker tells the database it is alive"
    )
    stale_after_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="a running job whose worker was silent this long is requeued once, then failed",
    )
    poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="longest wait between an idle worker's looks at the queue"
    )


class RunConfig(BaseModel):
    """Everything a run needs. Plugin sections live beside these fields (see :meth:`options`)."""

    # Read-only once validated: what a plugin decides travels as a typed fact (factory.model.facts),
    # and a changed copy is made with model_copy(update=...), never by assignment.
    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    model: str = Field(
        "smollm2-135m-instruct", description="folder, GGUF file, hub id (owner/name, downloaded) or alias"
    )
    revision: str | None = Field(
        None, description="branch, tag or commit of a hub model to download and load (default: main)"
    )
    adapter: str | None = Field(
        None,
        description="a trained adapter folder to load on top (chat, export, eval), or to train further (a training run with a method that trains adapters)",
    )
    loader: str = Field("auto", description="model loader; auto asks each registered loader")
    trust_remote_code: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attn_implementation: str = Field("sdpa", description="sdpa, eager, or one a patch plugin adds")
    gradient_checkpointing: bool = False
    patches: list[str] = Field(default_factory=list, description="model patches to apply, in order")
    quantization: str | None = Field(None, description="quantization backend, e.g. bnb-4bit")

    # data
    template: str = Field("auto", description="chat template; auto uses the tokenizer's own")
    reasoning: Literal["train", "keep", "drop"] = Field(
        "train",
        description="reasoning (<think> spans, reasoning_content) of the final answer: train it, keep it "
        "untrained, or drop it; earlier turns' reasoning is kept or dropped as the template's family does",
    )
    enable_thinking: bool | None = Field(
        None,
        description="for templates with a thinking switch (qwen3...): false opens answers with an empty "
        "reasoning block; None: the template's default",
    )
    dataset: str | list[str] = Field("identity", description="data set name, path, or a list of them")
    dataset_dir: str | None = Field(None, description="folder searched for data set descriptors")
    eval_dataset: str | list[str] | None = None
    cutoff_len: int = Field(1024, gt=0, le=MAX_COUNT)
    max_samples: int | None = Field(None, gt=0, le=MAX_COUNT)
    val_size: float = Field(0.0, ge=0, le=MAX_COUNT)
    streaming: bool = False
    packing: bool | None = Field(None, description="pack examples into full rows; None: on for pt")
    padding_free: bool = Field(
        True, description="send each batch as one row with restarting positions instead of padding (sft/pt)"
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat"
    interleave_probs: list[float] | None = None
    train_on: Literal["all", "last"] = Field("all", description="assistant turns to train on")
    placeholders: dict[str, str] = Field(default_factory=dict, description="{{name}} -> value in data")
    preprocessing_num_workers: int | None = Field(None, gt=0, le=1024)

    # training
    stage: str = "sft"
    method: str = "lora"
    optimizer: str = "adamw"
    callbacks: list[str] = Field(default_factory=list)
    output_dir: str | None = Field(None, description="where outputs go; default outputs/STAGE-METHOD-TIMESTAMP")
    overwrite_output_dir: bool = False
    resume: bool = False
    batch_size: int = Field(4, gt=0, le=MAX_COUNT)
    eval_batch_size: int | None = Field(None, gt=0, le=MAX_COUNT)
    gradient_accumulation_steps: int = Field(1, gt=0, le=MAX_COUNT)
    learning_rate: float = Field(1e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_grad_norm: float = Field(1.0, ge=0, allow_inf_nan=False)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0, le=MAX_COUNT)
    num_epochs: float = Field(3.0, gt=0, le=MAX_COUNT)
    max_steps: int = Field(-1, ge=-1, le=MAX_COUNT, description="stop after N optimizer steps; -1 uses num_epochs")
    logging_steps: int = Field(5, gt=0, le=MAX_COUNT)
    save_steps: int | None = Field(None, gt=0, le=MAX_COUNT, description="checkpoint every N steps")
    save_total_limit: int | None = Field(None, gt=0, le=MAX_COUNT)
    eval_steps: int | None = Field(None, gt=0, le=MAX_COUNT)
    seed: int = Field(42, ge=0, le=MAX_SEED)
    shuffle: bool = Field(
        True, description="draw training batches in a seeded random order; false keeps the data set's own order"
    )
    nproc: int = Field(1, gt=0, le=1024, description="processes for data-parallel training (torchrun)")
    deepspeed: str | None = Field(
        None, description="DeepSpeed: zero2 or zero3 (factory's presets) or a DeepSpeed JSON config file"
    )
    fsdp: str | None = Field(
        None, description="FSDP (run as FSDP2, CUDA GPUs only): the Trainer's FSDP options, e.g. 'full_shard auto_wrap'"
    )
    report_to: list[str] = Field(default_factory=list)
    frozen_weights: Literal["compute", "fp32"] = Field(
        "compute", description="keep frozen weights in the compute precision (bf16) or in fp32 under autocast"
    )
    torch_compile: bool = Field(False, description="compile the model with torch.compile (slow first steps)")
    chunked_loss: bool = Field(True, description="compute the LM loss on labelled positions only, a chunk at a time")
    fused_ops: bool = Field(True, description="RMSNorm and SwiGLU as autograd functions keeping fewer activations")
    kernel_cache_limit: bool = Field(
        True, description="bound torch's CPU kernel caches so each new batch shape does not keep its own (oneDNN)"
    )
    reuse_memory: bool = Field(
        True,
        description="in training, keep freed memory for the next step instead of returning it to the system (glibc)",
    )
    trim_memory: bool = Field(False, description="return freed heap memory to the system after every step (glibc)")
    sample_prompt: str | None = Field("Who are you?", description="after SFT, print the tuned model's answer to this")

    # inference
    max_new_tokens: int = Field(256, gt=0, le=MAX_COUNT)
    temperature: float = Field(0.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    system: str | None = Field(None, description="system prompt for chat (default: the template's)")
    engine: str = Field("transformers", description="inference engine: transformers, or one a plugin adds (vllm)")
    max_batch_size: int = Field(
        8, gt=0, le=4096, description="most requests the engine generates together in one batch"
    )
    host: str = Field("127.0.0.1", description="address factory serve listens on")
    port: int = Field(8000, ge=0, le=65535, description="port factory serve listens on (0: any free port)")
    api_key: str | None = Field(
        None, description="when set, factory serve requires 'Authorization: Bearer KEY' (full access)"
    )
    api_keys: dict[str, Literal["read", "submit"]] = Field(
        default_factory=dict, description="more keys of factory serve with a scope: read (GET routes only) or submit"
    )
    max_request_bytes: int = Field(
        4 * 2**20, gt=0, le=2**31, description="largest request body factory serve reads; larger ones get 413 unread"
    )
    openapi: bool = Field(False, description="serve /openapi.json and /docs (behind the API key)")
    served_model_name: str | None = Field(None, description="model id the server reports and accepts (default: model)")

    # export (factory export)
    export_dir: str | None = Field(
        None, description="folder factory export writes (output=DIR on the command line does the same)"
    )
    export_max_shard_size: int | None = Field(
        None,
        gt=0,
        description="largest safetensors file of an export, in bytes or with a unit (500MB, 2GB, 1GiB); "
        "bigger models are split into shards with an index; default: transformers' (50GB)",
    )
    export_ollama: bool = Field(
        False,
        description="also write an Ollama Modelfile: FROM ., the chat template as TEMPLATE, stop tokens, the default SYSTEM",
    )
    export_hub_repo: str | None = Field(
        None, description="hub repository (owner/name) to upload the exported folder to (HF_ENDPOINT, HF_TOKEN)"
    )
    export_hub_private: bool = Field(
        True, description="create export_hub_repo as a private repository when it does not exist yet"
    )

    # evaluation
    task: str | None = Field(
        None, description="evaluator: mmlu, cmmlu, ceval (multiple choice) or bleu-rouge (predict)"
    )
    task_dir: str | None = Field(
        None, description="benchmark folder with dev/ and test/ (or val/), one CSV per subject"
    )
    subjects: list[str] | None = Field(None, description="subjects to evaluate (CSV file names); default: all")
    eval_split: str | None = Field(
        None, description="folder of task_dir to score; default: the task's (test, C-Eval val)"
    )
    n_shot: int = Field(5, ge=0, le=1000, description="solved examples from dev/ before each question")
    eval_prompt: Literal["chat", "raw"] = Field(
        "chat", description="render questions with the chat template or as raw text"
    )
    results_db: str | None = Field(
        None,
        description="SQLite file or SQLAlchemy URL recording runs and jobs; default FACTORY_RESULTS_DB or the user data folder",
    )
    results_db_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds a write waits for a locked SQLite database before giving up"
    )

    jobs: JobsConfig = Field(default_factory=JobsConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        """``RunConfig(lora={"rank": 16}, learning_rate=2e-4)``: flat keys, grouped sections and plugin sections."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, RunConfig, None)) from None

    @model_validator(mode="wrap")
    @classmethod
    def _with_sections(cls, data: Any, handler: Any) -> RunConfig:
        """Split grouped and plugin sections off the core keys; validate each plugin section by its options model.

        Plugin sections belong to the schema however the config is built (a YAML file, key=value,
        keyword arguments, ``RunConfig(...)``), so this runs inside validation rather than in
        :func:`load_config`.
        """
        if isinstance(data, RunConfig):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a mapping of keys to values, not {type(data).__name__}")
        data = _ungroup(data)
        plugins_cfg = _validate(PluginsConfig, data.get("plugins") or {}, "plugins")
        manager = get_manager(plugins_cfg.disable, plugins_cfg.prefer)
        sections = manager.sections()
        unknown = [k for k in data if k not in CORE_KEYS and k not in sections]
        conflicts = manager.section_conflicts()
        clashing = next((k for k in unknown if k in conflicts), None)
        if clashing is not None:
            raise ConfigError(conflicts[clashing])
        if unknown:
            raise ConfigError(_unknown_key(unknown[0], manager, sections))
        cfg = handler({k: v for k, v in data.items() if k in CORE_KEYS})
        validated = {}
        for name, (options, _users) in sections.items():
            raw = data.get(name)
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                raise ConfigError(
                    f"config key '{name}' must be a mapping of options (e.g. {name}.KEY=VALUE), not {raw!r}"
                )
            validated[name] = _validate(options, raw, name)
        cfg._sections = validated
        return cfg

    @field_validator("dataset")
    @classmethod
    def _dataset_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("give at least one data set")
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps_positive(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be a positive number of optimizer steps, or -1 to train for num_epochs")
        return value

    @field_validator("export_max_shard_size", mode="before")
    @classmethod
    def _shard_size_in_bytes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("export_hub_repo")
    @classmethod
    def _hub_repo_id(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$", value):
            raise ValueError("must be a hub repository id, owner/name")
        return value

    @field_validator("subjects", mode="before")
    @classmethod
    def _split_subjects(cls, value: Any) -> Any:
        # subjects=a,b on the command line arrives as one string
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()] or None
        return value

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)

    def options(self, section: str) -> Any:
        """The validated options of a plugin section (its defaults when the config omits it)."""
        try:
            return self._sections[section]
        except KeyError:
            raise ConfigError(
                f"config section '{section}' is not known to the installed plugins"
                f"{did_you_mean(section, self._sections)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The whole resolved config with flat keys, reloadable with :func:`load_config`."""
        data = self.model_dump(mode="json")
        for name, section in sorted(self._sections.items()):
            data[name] = section.model_dump(mode="json")
        return data

    def to_grouped(self) -> dict[str, Any]:
        """The same config in sections (model, data, train, output, serve, eval, then plugin sections)."""
        return group_keys(self.to_dict())

    def section(self, group: str) -> dict[str, Any]:
        """The core keys of one group (``cfg.section("train")["learning_rate"]``)."""
        if group not in GROUPS:
            raise ConfigError(
                f"config group '{group}' does not exist{did_you_mean(group, GROUPS)} (groups: {', '.join(GROUPS)})"
            )
        return {key: getattr(self, key) for key in GROUPS[group]}

    def manager(self) -> PluginManager:
        return get_manager(self.plugins.disable, self.plugins.prefer)


CORE_KEYS = frozenset(RunConfig.model_fields)

# The sections a config may also be written in; flat keys keep working. Every core key but the
# nested jobs and plugins belongs to exactly one group (a test checks).
GROUPS: dict[str, tuple[str, ...]] = {
    "model": (
        "model",
        "revision",
        "adapter",
        "loader",
        "trust_remote_code",
        "precision",
        "attn_implementation",
        "gradient_checkpointing",
        "patches",
        "quantization",
        "frozen_weights",
    ),
    "data": (
        "template",
        "reasoning",
        "enable_thinking",
        "dataset",
        "dataset_dir",
        "eval_dataset",
        "cutoff_len",
        "max_samples",
        "val_size",
        "streaming",
        "packing",
        "padding_free",
        "mix_strategy",
        "interleave_probs",
        "train_on",
        "placeholders",
        "preprocessing_num_workers",
    ),
    "train": (
        "stage",
        "method",
        "optimizer",
        "callbacks",
        "batch_size",
        "eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "weight_decay",
        "max_grad_norm",
        "lr_scheduler",
        "warmup_ratio",
        "warmup_steps",
        "num_epochs",
        "max_steps",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "seed",
        "shuffle",
        "nproc",
        "deepspeed",
        "fsdp",
        "report_to",
        "torch_compile",
        "chunked_loss",
        "fused_ops",
        "kernel_cache_limit",
        "reuse_memory",
        "trim_memory",
        "sample_prompt",
    ),
    "output": ("output_dir", "overwrite_output_dir", "resume"),
    "serve": (
        "max_new_tokens",
        "temperature",
        "top_p",
        "system",
        "engine",
        "max_batch_size",
        "host",
        "port",
        "api_key",
        "api_keys",
        "max_request_bytes",
        "openapi",
        "served_model_name",
    ),
    "export": ("export_dir", "export_max_shard_size", "export_ollama", "export_hub_repo", "export_hub_private"),
    "eval": ("task", "task_dir", "subjects", "eval_split", "n_shot", "eval_prompt", "results_db", "results_db_timeout"),
}
# (group, key inside the group) <-> flat key, where the flat name would repeat the group's.
_GROUP_ALIASES: dict[tuple[str, str], str] = {
    ("model", "model"): "path",
    **{("export", key): key.removeprefix("export_") for key in GROUPS["export"]},
}
_FROM_GROUP = {(group, alias): key for (group, key), alias in _GROUP_ALIASES.items()}


def group_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat core keys moved into their groups (only the groups they fill); other keys keep their names."""
    rest = dict(flat)
    grouped: dict[str, Any] = {}
    for group, fields in GROUPS.items():
        inner = {_GROUP_ALIASES.get((group, key), key): rest.pop(key) for key in fields if key in rest}
        if inner:
            grouped[group] = inner
    grouped.update(rest)  # jobs, plugins and the plugin sections keep their own names
    return grouped


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """``"500MB"``, ``"2GB"``, ``"1GiB"`` or ``"1048576"`` as bytes (units are bytes whatever their case)."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError("must be a size such as 500MB, 2GB or 1GiB (or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _ungroup(data: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keys from a config that may use groups (``train: {learning_rate: 2e-4}``, ``model: {path: X}``)."""
    flat: dict[str, Any] = {}
    grouped: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, Mapping):
            for inner, item in value.items():
                name = _FROM_GROUP.get((key, inner), inner)
                if name not in GROUPS[key] or (key, inner) in _GROUP_ALIASES:
                    valid = [_GROUP_ALIASES.get((key, k), k) for k in GROUPS[key]]
                    raise ConfigError(
                        f"unknown config key '{key}.{inner}'{did_you_mean(str(inner), valid)} "
                        f"(the {key} group holds: {', '.join(valid)})"
                    )
                grouped[name] = item
        else:
            flat[key] = value
    clash = next((key for key in grouped if key in flat and flat[key] != grouped[key]), None)
    if clash is not None:
        raise ConfigError(
            f"config key '{clash}' is given both flat and inside its group, with different values; keep one"
        )
    return {**flat, **grouped}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["lora.rank=16", "dataset=[a,b]"]`` into a nested dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. learning_rate=2e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


def override_list(overrides: Iterable[str]) -> list[str]:
    """``overrides`` as a list of strings; a bare string (read character by character otherwise) is refused."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(
            f"overrides must be a list of 'key=value' strings, e.g. [{str(overrides)!r}], not the single string {str(overrides)!r}"
        )
    try:
        items = list(overrides)
    except TypeError:
        raise ConfigError(f"overrides must be a list of 'key=value' strings, not {overrides!r}") from None
    strange = next((item for item in items if not isinstance(item, str)), None)
    if strange is not None:
        raise ConfigError(
            f"override {strange!r} is not a string; overrides are 'key=value' strings, e.g. 'batch_size=2'"
        )
    return items


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict) and depth == 0:
            child = node[part] = _as_group(part, child)
        if not isinstance(child, dict):
            raise ConfigError(f"key '{key}' sets a field inside '{part}', which already has the value {child!r}")
        node = child
    _assign(node, parts[-1], value, top=node is target)


def _merge(base: dict[str, Any], extra: Mapping[str, Any], *, top: bool = True) -> dict[str, Any]:
    for key, value in extra.items():
        if "." in key:
            _set_dotted(base, key, value)
        elif isinstance(value, Mapping) and top and key in GROUPS and key in base and not isinstance(base[key], dict):
            base[key] = _as_group(key, base[key])  # `model: X` then `model: {precision: bf16}`
            _merge(base[key], value, top=False)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, top=False)
        else:
            _assign(base, key, value, top=top)
    return base


def _assign(node: dict[str, Any], key: str, value: Any, *, top: bool) -> None:
    """Set one key; a scalar for a group given as a mapping so far (`model: {..}` then `model=X`) fills its primary key."""
    value = copy.deepcopy(value) if isinstance(value, (dict, list)) else value
    if top and key in GROUPS and isinstance(node.get(key), dict) and not isinstance(value, Mapping):
        node[key][_GROUP_ALIASES.get((key, key), key)] = value
    else:
        node[key] = value


def _as_group(group: str, value: Any) -> Any:
    """``model: X`` written flat, as the group's own mapping (``{path: X}``), so group keys can join it."""
    alias = _GROUP_ALIASES.get((group, group))
    return {alias: value} if alias is not None else value


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict, with one-sentence errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; give the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    **kwargs: Any,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file or dict, CLI overrides and kwargs.

    Later sources win: file, then ``key=value`` overrides, then keyword arguments. Plugin
    sections are validated by their plugins' options models. A LLaMA-Factory config (file or
    dict) is translated first (:mod:`factory.lf_compat`).
    """
    overrides = override_list(overrides)
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = _merge({}, source)
    elif isinstance(source, (str, os.PathLike)):
        data = read_config_file(source)
    else:
        raise ConfigError(
            f"the config must be a YAML file path, a dict of keys or a RunConfig, not the {type(source).__name__} {source!r}"
        )
    if lf_compat.is_llamafactory(data):
        data = lf_compat.translate(data)  # a LLaMA-Factory YAML, unchanged; overrides stay factory keys
    _merge(data, parse_overrides(overrides))
    _merge(data, kwargs)

    return _validate(RunConfig, data, None)


def _unknown_key(key: str, manager: PluginManager, sections: Mapping[str, Any]) -> str:
    from factory import catalogue

    dist = catalogue.provider_of("sections", key)
    if dist is not None:
        return f"config key '{key}' belongs to {dist}, which is not installed or not enabled; pip install {dist}"
    hint = did_you_mean(key, list(CORE_KEYS) + list(sections))
    return f"unknown config key '{key}'{hint or ' (see docs/config.md for the valid keys)'}"


def _validate(model: type[BaseModel], data: Any, prefix: str | None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, model, prefix)) from None


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str | None) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    if err["type"] == "extra_forbidden":
        parent: Any = model
        for part in loc[:-1]:
            field = getattr(parent, "model_fields", {}).get(part)
            parent = getattr(field, "annotation", None)
        path = ".".join(([prefix] if prefix else []) + loc[:-1])
        valid = [f"{path}.{name}" if path else name for name in getattr(parent, "model_fields", {})]
        hint = did_you_mean(key, valid)
        return f"unknown config key '{key}'{hint or ' (valid keys: ' + ', '.join(valid) + ')'}"
    if not loc and err["type"] == "value_error":
        return f"config section '{prefix}': {err['msg'].removeprefix('Value error, ')}"
    given = err.get("input")
    shown = f" (got {given!r})" if not isinstance(given, (dict, list)) or len(repr(given)) < 60 else ""
    return f"config key '{key}': {err['msg'].removeprefix('Value error, ')}{shown}"


def config_schema(manager: PluginManager | None = None) -> dict[str, Any]:
    """The JSON schema of a run config: every core key (with its group) and every installed plugin's section.

    A form built from it (the web UI's) shows a third-party plugin's options with no code of its own.
    """
    manager = manager or get_manager()
    schema = RunConfig.model_json_schema()
    for group, keys in GROUPS.items():
        for key in keys:
            schema["properties"][key]["x-factory-group"] = group
    for name, (options, users) in sorted(manager.sections().items()):
        section = options.model_json_schema()
        section["x-factory-plugin"] = users[0].distribution
        section["x-factory-used-by"] = [f"{LABELS[impl.kind]} {impl.name}" for impl in users]
        schema["properties"][name] = section
    return schema
