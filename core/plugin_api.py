"""The one stable import surface for plugins.

A ``factory-plugin-*`` package imports factory only through this module (a test enforces it for
the plugins under ``plugins/``), so the core can reorganise its rooms without breaking a
third-party plugin. Everything here keeps its name and meaning across minor versions.

Names are resolved lazily (PEP 562): importing this module imports neither torch nor
transformers, so a plugin's ``register_*`` hooks stay cheap to call when plugins are listed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError, DataError, FactoryError, PluginError, did_you_mean, one_of
from factory.hookspecs import hookimpl
from factory.registry import Requires

# name -> module that defines it; grouped by what a plugin author looks for.
_LAZY: dict[str, str] = {
    # configuration and the plugin manager
    "RunConfig": "factory.config",
    "PluginManager": "factory.plugins",
    # hardware facts
    "hardware": "factory",
    # models: target modules, checkpointing, quantized checkpoints, fused low-rank kernels
    "TargetModules": "factory.model.modules",
    "resolve_targets": "factory.model.modules",
    "check_modules": "factory.model.modules",
    "matches": "factory.model.modules",
    "is_linear": "factory.model.modules",
    "is_quantized_linear": "factory.model.modules",
    "linear_module_names": "factory.model.modules",
    "checkpoint_config": "factory.model.checkpoint",
    "ComputeDtype": "factory.model.quantized",
    "compute_dtype": "factory.model.quantized",
    "calibration_texts": "factory.model.quantized",
    "checkpoint_quantization": "factory.model.quantized",
    "pin_training_kernels": "factory.model.quantized",
    "freeze_base": "factory.model.quantized",
    "require_checkpoint": "factory.model.quantized",
    "require_quantized_layers": "factory.model.quantized",
    "save_quantized": "factory.model.quantized",
    "attach_dequantizer": "factory.model.quantized",
    "dequantizer_of": "factory.model.quantized",
    "low_rank_linear": "factory.model.fused",
    "stacked_low_rank_linear": "factory.model.fused",
    "WeightSource": "factory.model.fused",
    "ALIASES": "factory.model.aliases",
    "resolve_alias": "factory.model.aliases",
    "load_model": "factory.model.loader",
    "ModelFacts": "factory.model.facts",
    "LoadedModel": "factory.model.loader",
    "supports_packed_positions": "factory.model.loader",
    "shares_prefixes": "factory.model.attention",
    "KeyCache": "factory.model.attention",
    "register_varlen_sdpa": "factory.model.attention",
    # data
    "IGNORE_INDEX": "factory.data.tokenize",
    "pad": "factory.data.collator",
    "pad_token_id": "factory.data.collator",
    "sequence_batch": "factory.data.collator",
    "get_template": "factory.data.template",
    "Template": "factory.data.template",
    "TemplateLibrary": "factory.data.template",
    "Segment": "factory.data.template",
    "BadRow": "factory.data.formats",
    "SkipRow": "factory.data.formats",
    "empty_record": "factory.data.record",
    "PROMPT_ROLES": "factory.data.record",
    "ConversationKind": "factory.data.tokenize",
    "Conversation": "factory.data.tokenize",
    "Split": "factory.data.tokenize",
    "final_answer": "factory.data.tokenize",
    "labels_of": "factory.data.tokenize",
    "said": "factory.data.tokenize",
    # training: optimizers' parameter groupings, decoder layers, stages
    "default_param_groups": "factory.train.optim",
    "projected_groups": "factory.train.optim",
    "split_groups": "factory.train.optim",
    "LayerwiseOptimizer": "factory.train.layerwise",
    "check_layerwise": "factory.train.layerwise",
    "decoder_layers": "factory.train.methods",
    "TrainerSetup": "factory.train.run",
    "run_training": "factory.train.run",
    "default_trainer": "factory.train.run",
    "FactoryTrainer": "factory.train.trainer",
    "LogitsWorkspace": "factory.train.loss",
    "chunked_token_logprobs": "factory.train.loss",
    "split_head": "factory.train.loss",
    # inference engines
    "Engine": "factory.infer.base",
    "GenerationRequest": "factory.infer.base",
    "GenerationResult": "factory.infer.base",
    "PromptTooLongError": "factory.infer.base",
    "TextStream": "factory.infer.base",
    "prompt_ids": "factory.infer.base",
    "split_stop_words": "factory.infer.base",
    "stop_tokens": "factory.infer.engine",
    "load_engine": "factory.infer.base",
    # front ends beside the CLI (the web UI): the config's schema, the job queue, the run history,
    # data preview and export, each the same function the CLI calls
    "load_config": "factory.config",
    "parse_overrides": "factory.config",
    "config_schema": "factory.config",
    "CONFIG_GROUPS": "factory.config",
    "JobQueue": "factory.store.jobs",
    "check_runnable": "factory.service.jobs",
    "queue_config": "factory.service.jobs",
    "outputs_folder": "factory.service.jobs",
    "job_kind": "factory.service.jobs",
    "run_history": "factory.store.history",
    "run_details": "factory.store.history",
    "load_tokenizer": "factory.preview",
    "detect_kind": "factory.preview",
    "row_pieces": "factory.preview",
    "load_records": "factory.data.worker",
    "tokenize_dataset": "factory.data.processing",
    "dataset_specs": "factory.data.resolve",
    "BUILTIN_DATASETS": "factory.data.resolve",
    "model_type_of": "factory.data.template_auto",
    "detect_template": "factory.data.template_auto",
    "export_model": "factory.model.export",
}
# exported under another name than the module's own (a clearer one for plugin authors)
_RENAMED: dict[str, str] = {
    "CONFIG_GROUPS": "GROUPS",
    "run_history": "history",
    "dataset_specs": "read_specs",
    "BUILTIN_DATASETS": "BUILTIN_DIR",
}

__all__ = [
    "ConfigError",
    "DataError",
    "FactoryError",
    "PluginError",
    "Requires",
    "did_you_mean",
    "hookimpl",
    "one_of",
    *_LAZY,
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    pass


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"factory.plugin_api has no '{name}'; the plugin API lists its names in __all__")
    if module == "factory":
        return importlib.import_module(f"factory.{name}")
    return getattr(importlib.import_module(module), _RENAMED.get(name, name))


def __dir__() -> list[str]:
    return sorted(__all__)
