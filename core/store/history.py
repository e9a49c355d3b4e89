"""Run history across kinds: training runs (``train-N``) and eval runs (``eval-N``), newest first."""

from __future__ import annotations

from typing import Any

from factory.errors import ConfigError
from factory.store.database import Database
from factory.store.evals import ResultsStore
from factory.store.training import TrainingRuns

RUN_KINDS = ("train", "eval")


def parse_ref(ref: str) -> tuple[str, int]:
    """``train-4`` -> ("train", 4), ``eval-7`` -> ("eval", 7); a bare number is a training run."""
    kind, _, number = ref.partition("-") if not ref.isdigit() else ("train", "-", ref)
    if kind not in RUN_KINDS or not number.isdigit():
        raise ConfigError(f"run '{ref}' is not a run name; runs are named train-N or eval-N (see factory runs list)")
    return kind, int(number)


def history(db: Database, kind: str | None = None, limit: int | None = 20) -> list[dict[str, Any]]:
    """Both kinds of runs (or one), newest first, as JSON-ready dicts with ``run`` and ``kind``."""
    if kind not in (None, *RUN_KINDS):
        raise ConfigError(f"run kind '{kind}' is not one of {', '.join(RUN_KINDS)}")
    listed: list[tuple[float, dict[str, Any]]] = []
    if kind in (None, "train"):
        listed += [(run.started_at, {**run.to_dict(), "kind": "train"}) for run in TrainingRuns(db).list(limit)]
    if kind in (None, "eval"):
        listed += [
            (run.created_at.timestamp(), {**run.to_dict(), "run": f"eval-{run.id}", "kind": "eval"})
            for run in ResultsStore(db).runs(limit)
        ]
    runs = [run for _, run in sorted(listed, key=lambda pair: pair[0], reverse=True)]
    return runs[:limit] if limit else runs


def run_details(db: Database, ref: str) -> dict[str, Any]:
    """One run in full: a training run with its config, loss curve and the evals of what it wrote."""
    kind, number = parse_ref(ref)
    if kind == "eval":
        return {**ResultsStore(db).get(number).to_dict(), "run": f"eval-{number}", "kind": "eval"}
    run = TrainingRuns(db).get(number)
    evaluations = ResultsStore(db).evaluations_of(run.output_dir) if run.output_dir else []
    return {**run.to_dict(), "kind": "train", "evaluations": [f"eval-{e.id}" for e in evaluations]}
