"""The Python API: what ``import factory; factory.finetune(...)`` calls."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from factory.config import RunConfig, load_config, override_list, read_config_file
from factory.plugins import PluginManager, get_manager


def check_training_selection(cfg: RunConfig, manager: PluginManager) -> None:
    """Refuse, before any model is loaded, every selected implementation that cannot run here (or cannot train).

    Plugins first (a missing or GPU-only one is the first thing to fix), then the model source,
    then what depends on both (a quantized checkpoint, an adapter to continue, settings the optimizer
    cannot honour), then the stage.
    """
    from factory.data.kinds import data_kind
    from factory.data.processing import packing_enabled
    from factory.model.loader import check_adapter_continuation, check_quantized_checkpoint, pick_loader

    quantizer = manager.require("quantizers", cfg.quantization).load() if cfg.quantization else None
    for name in cfg.patches:
        manager.require("patches", name)
    adapter = manager.load("adapters", cfg.method)
    optimizer = manager.load("optimizers", cfg.optimizer)
    for name in cfg.callbacks:
        manager.require("callbacks", name)
    if cfg.template != "auto":
        manager.require("templates", cfg.template)
    stage = manager.load("stages", cfg.stage)
    packing_enabled(
        cfg, data_kind(manager, stage.data_kind, cfg.stage), None, stage.data_kind
    )  # kind known, packing fits
    pick_loader(cfg, manager)
    if quantizer is None:
        check_quantized_checkpoint(cfg, manager)
    elif callable(getattr(quantizer, "check_trainable", None)):
        quantizer.check_trainable(cfg)
    if cfg.adapter:
        check_adapter_continuation(cfg, adapter)
    if callable(getattr(optimizer, "check_trainable", None)):
        optimizer.check_trainable(cfg)
    if callable(getattr(stage, "check", None)):
        stage.check(cfg, manager)


def finetune(
    config: str | os.PathLike[str] | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """Run a training job from a YAML path, a dict or a RunConfig, plus overrides; return metrics.

    With no arguments at all it runs the embedded default job (:data:`factory.defaults.DEFAULT_JOB`);
    otherwise unset keys take the :class:`RunConfig` defaults.
    """
    from factory.quiet import quiet_libraries

    quiet_libraries()
    overrides = override_list(overrides)
    if config is None and not overrides and not kwargs:
        from factory.defaults import DEFAULT_JOB

        config = DEFAULT_JOB
    if isinstance(config, (str, os.PathLike, Mapping)):
        from factory.lf_compat import check_trains

        check_trains(
            config if isinstance(config, Mapping) else read_config_file(config),
            "THIS.yaml" if isinstance(config, Mapping) else str(config),
        )
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides, **kwargs)
    manager = cfg.manager()
    from factory.train.launch import CHECKED_ENV
    from factory.train.preflight import check_training
    from factory.train.run import is_distributed_worker

    if not (is_distributed_worker() and os.environ.get(CHECKED_ENV)):  # the launching process checked already
        check_training_selection(cfg, manager)
        check_training(cfg)
    if cfg.nproc > 1 and not is_distributed_worker():
        from factory.train.launch import launch_distributed

        return launch_distributed(cfg)
    stage = manager.load("stages", cfg.stage)
    return stage.run(cfg, manager)


def plugins() -> list[dict[str, Any]]:
    """Every discovered plugin, as ``factory plugins list --json`` prints it."""
    return get_manager().listing()
