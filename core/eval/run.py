"""Running an evaluation end to end: config -> evaluator -> results store."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from factory.config import RunConfig, load_config
from factory.errors import ConfigError, one_of
from factory.eval.results import EvalResult
from factory.eval.store import ResultsStore
from factory.plugins import PluginManager


def check_evaluation(cfg: RunConfig, manager: PluginManager) -> Any:
    """The evaluator, after refusing every selected implementation that cannot run here."""
    if not cfg.task:
        names = [impl.name for impl in manager.implementations("evaluators")]
        raise ConfigError(f"no task given; set task=NAME, one of {one_of(names)}")
    if cfg.quantization:
        manager.require("quantizers", cfg.quantization)
    for name in cfg.patches:
        manager.require("patches", name)
    from factory.model.loader import pick_loader

    pick_loader(cfg, manager)
    if cfg.template != "auto":
        manager.require("templates", cfg.template)
    return manager.load("evaluators", cfg.task)


def evaluate(
    config: str | os.PathLike[str] | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
    *,
    command: str = "eval",
    loaded: Any = None,
    engine: Any = None,
    progress: bool = True,
    record: bool = True,
    **kwargs: Any,
) -> EvalResult:
    """Run the config's ``task`` and record it in the results store (``result.run_id``).

    ``loaded`` (a :class:`factory.model.loader.LoadedModel`) or ``engine`` (an inference engine)
    reuses a model already in memory; otherwise the evaluator loads ``model`` (+ ``adapter``) itself. ``command`` is what the
    store files the run under (``eval`` or ``predict``).
    """
    from factory import __version__
    from factory.quiet import quiet_libraries

    quiet_libraries()
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides, **kwargs)
    manager = cfg.manager()
    evaluator = check_evaluation(cfg, manager)
    store = ResultsStore(cfg.results_db) if record else None  # a bad results_db fails before the long part
    started = time.perf_counter()
    result = evaluator.evaluate(cfg, manager, loaded=loaded, engine=engine, progress=progress)
    if store is not None:
        result.run_id = store.record(
            result,
            command=command,
            model=cfg.model,
            adapter=cfg.adapter,
            duration_s=time.perf_counter() - started,
            factory_version=__version__,
        )
    return result
