"""Running an evaluation end to end: config -> evaluator -> results store.

No finished result is lost to the database: when the write fails (locked past
``results_db_timeout``, read-only, another schema), the result is written to a JSON file beside
the run's outputs and one sentence names the database's error and the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from factory.config import RunConfig, load_config
from factory.errors import ConfigError, one_of
from factory.eval.progress import ProgressOption
from factory.eval.results import EvalResult
from factory.plugins import PluginManager

log = logging.getLogger(__name__)


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
    progress: ProgressOption = True,
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
    store = None
    if record:  # a bad results_db (or no database support installed) fails before the long part
        from factory.extras import require

        require("store", "recording the evaluation in the results database")
        from factory.store.evals import ResultsStore

        store = ResultsStore(cfg.results_db, timeout=cfg.results_db_timeout)
    started = time.perf_counter()
    result = evaluator.evaluate(cfg, manager, loaded=loaded, engine=engine, progress=progress)
    if store is not None:
        facts = recorded_facts(cfg, command, time.perf_counter() - started, __version__)
        from factory.store.database import StoreError

        try:
            result.run_id = store.record(result, **facts)
        except StoreError as exc:
            saved = save_beside_outputs(result, cfg, {**facts, "database_error": str(exc)})
            log.warning("%s; the result was written to %s instead", exc, saved)
    return result


def recorded_facts(cfg: RunConfig, command: str, duration_s: float, version: str) -> dict[str, Any]:
    """What the store files a run under besides its scores; local paths resolved, so an eval of an
    adapter finds the training run that wrote that folder."""
    return {
        "command": command,
        "model": local_path(cfg.model),
        "adapter": local_path(cfg.adapter),
        "duration_s": duration_s,
        "factory_version": version,
    }


def local_path(value: str | None) -> str | None:
    """An existing local file or folder as its absolute path; anything else (an alias, a hub id) as given."""
    if value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def save_beside_outputs(result: EvalResult, cfg: RunConfig, facts: Mapping[str, Any]) -> Path:
    """Write the result as JSON next to the run's outputs (its predictions file, else output_dir, else here)."""
    if result.output_file:
        folder = Path(result.output_file).parent
    else:
        folder = Path(cfg.output_dir) if cfg.output_dir else Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{facts.get('command', 'eval')}-result-{result.task}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps({**result.to_dict(), **facts}, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    partial.replace(path)  # complete or absent, never half-written
    return path
