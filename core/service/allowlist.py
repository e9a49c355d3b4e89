"""What a job body may say: its kind's keys only, models and folders from the operator's allowlist.

A job arrives from anyone holding an API key, so its body is read by allowlist, never merged
over the server's config: an eval job may set evaluation keys, a finetune job training keys (and
the options of the method and optimizer it picks); any other key is refused (400) naming it, and
every model, adapter, benchmark folder and data file it names must be the served one or one the
operator listed in the server's ``jobs.allow_models`` / ``jobs.allow_dirs``. Paths are checked
before anything touches them, after resolving ``..`` and symbolic links, so a refusal says
nothing about what exists outside the allowed folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from factory.config import RunConfig, load_config
from factory.errors import ConfigError, did_you_mean

# The keys an evaluation or predict job may set; everything else is the operator's.
JOB_KEYS: frozenset[str] = frozenset(
    {
        "task",
        "task_dir",
        "subjects",
        "eval_split",
        "n_shot",
        "eval_prompt",
        "max_samples",
        "dataset",
        "eval_batch_size",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "system",
        "cutoff_len",
        "model",
        "adapter",
    }
)

# The keys a finetune job may set: what to train on and how; never where outputs go, which code
# loads the model, or how many processes and machines it takes.
FINETUNE_KEYS: frozenset[str] = frozenset(
    {
        "model",
        "adapter",
        "template",
        "dataset",
        "eval_dataset",
        "cutoff_len",
        "max_samples",
        "val_size",
        "packing",
        "padding_free",
        "mix_strategy",
        "interleave_probs",
        "train_on",
        "system",
        "stage",
        "method",
        "optimizer",
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
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "seed",
        "gradient_checkpointing",
        "precision",
        "sample_prompt",
    }
)

# Why the keys a hostile or careless body is most likely to try are refused.
_WHY_NOT: dict[str, str] = {
    "trust_remote_code": "a job may never run code from a model folder",
    "results_db": "the server records every job in its own results database",
    "output_dir": "the server chooses where each job's outputs go",
    "overwrite_output_dir": "the server chooses where each job's outputs go",
    "dataset_dir": "data sets come from the server's dataset_dir or the allowed folders",
    "plugins": "which plugins take part is the operator's choice",
    "api_key": "keys are set by the operator",
    "api_keys": "keys are set by the operator",
    "jobs": "the allowlist is set by the operator",
}
_PLUGIN_SELECTION = (
    "loader",
    "quantization",
    "patches",
    "engine",
    "template",
    "attn_implementation",
    "method",
    "stage",
    "optimizer",
    "callbacks",
)


class JobRefused(ConfigError):
    """A job body that asks for something jobs may not have (answered with 400, nothing queued)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_keys(body: Any, keys: frozenset[str] = JOB_KEYS, sections: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body as a dict of allowed ``keys`` (and plugin ``sections``), or a JobRefused naming the first key that is not."""
    if not isinstance(body, Mapping):
        raise JobRefused(
            'the job body must be a JSON object of settings, e.g. {"task": "cmmlu", "subjects": ["anatomy"]}'
        )
    for key in body:
        if key in keys or key in sections:
            continue
        allowed = ", ".join(sorted(keys | sections))
        if key in _WHY_NOT or key in _PLUGIN_SELECTION:
            why = _WHY_NOT.get(key, "plugin selection is the operator's choice")
            raise JobRefused(f"job key '{key}' is not accepted ({why}); jobs accept only: {allowed}", key)
        raise JobRefused(
            f"job key '{key}' is not accepted{did_you_mean(str(key), keys | sections)}; jobs accept only: {allowed}",
            key,
        )
    return dict(body)


def finetune_sections(base: RunConfig, body: Mapping[str, Any]) -> frozenset[str]:
    """The option sections a finetune job may set: those of the method and optimizer it trains with."""
    picks = {"adapters": body.get("method", base.method), "optimizers": body.get("optimizer", base.optimizer)}
    chosen = {(kind, name) for kind, name in picks.items() if isinstance(name, str)}
    return frozenset(
        section
        for section, (_options, users) in base.manager().sections().items()
        if any((impl.kind, impl.name) in chosen for impl in users)
    )


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


class Allowlist:
    """The models and folders a server's jobs may reach, from its own config."""

    def __init__(self, base: RunConfig) -> None:
        self.base = base
        self.served = {base.model, base.served_model_name} - {None}
        self.models = set(base.jobs.allow_models)
        dirs = [*base.jobs.allow_dirs, base.task_dir, base.dataset_dir]
        self.dirs = [_real(folder) for folder in dirs if folder]

    def folder_allowed(self, value: str) -> bool:
        real = _real(value)
        return any(real == folder or real.is_relative_to(folder) for folder in self.dirs)

    def _model_allowed(self, value: str) -> bool:
        if value in self.models:
            return True
        real = _real(value)
        return any(real == _real(model) for model in self.models if os.sep in model or model.startswith("."))

    def _refuse_path(self, key: str, value: str) -> JobRefused:
        listed = ", ".join(str(folder) for folder in self.dirs) or "none"
        return JobRefused(
            f"job {key} '{value}' is outside the folders this server's jobs may read ({listed}); "
            "the operator adds folders with jobs.allow_dirs",
            key,
        )

    def check(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse any model, adapter, benchmark folder or data file the operator did not allow."""
        model = body.get("model")
        if model is not None:
            if not isinstance(model, str) or not (model in self.served or self._model_allowed(model)):
                raise JobRefused(
                    f"job model {model!r} is not one this server evaluates; use the served model "
                    f"'{sorted(self.served)[0]}' or one the operator lists in jobs.allow_models",
                    "model",
                )
        adapter = body.get("adapter")
        if adapter is not None and adapter != self.base.adapter:
            if not isinstance(adapter, str) or not (self._model_allowed(adapter) or self.folder_allowed(adapter)):
                raise self._refuse_path("adapter", str(adapter))
        task_dir = body.get("task_dir")
        if task_dir is not None and (not isinstance(task_dir, str) or not self.folder_allowed(task_dir)):
            raise self._refuse_path("task_dir", str(task_dir))
        for key in ("dataset", "eval_dataset"):
            datasets = body.get(key)
            for value in [datasets] if isinstance(datasets, str) else (datasets or []):
                self._check_dataset(value, key)
        return dict(body)

    def _check_dataset(self, value: Any, key: str) -> None:
        from factory.data.resolve import BUILTIN_DIR, read_specs

        if not isinstance(value, str):
            raise JobRefused(f"job {key} {value!r} must be a data set name or a file path", key)
        described = read_specs(_real(self.base.dataset_dir)) if self.base.dataset_dir else {}
        if value in described or value in read_specs(BUILTIN_DIR):
            return
        candidate = Path(value).expanduser()
        if not candidate.is_absolute() and self.base.dataset_dir:
            candidate = _real(self.base.dataset_dir) / candidate
        if not self.folder_allowed(str(candidate)):
            raise self._refuse_path(key, value)


def job_config(base: RunConfig, body: Any, output_dir: Path, *, finetune: bool = False) -> RunConfig:
    """The validated config of one job: the server's config, the job's allowed keys, the server's outputs."""
    if finetune:
        keys = check_keys(
            body, FINETUNE_KEYS, finetune_sections(base, body) if isinstance(body, Mapping) else frozenset()
        )
    else:
        keys = check_keys(body)
    settings = Allowlist(base).check(keys)
    same_model = settings.get("model", base.model) in (base.model, base.served_model_name)
    if same_model:
        settings["model"] = base.model  # the served name is an alias of what the server loaded
    data = base.to_dict()
    if not same_model:  # another allowed model: none of the served model's extras carry over
        data["adapter"] = None
    data.update(settings)
    data.update(
        output_dir=str(output_dir),
        overwrite_output_dir=False,
        resume=False,
        trust_remote_code=base.trust_remote_code and same_model,
    )
    return load_config(data)
