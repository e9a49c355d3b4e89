"""Evaluation runs: every eval/predict run, its settings and its scores (overall, category, subject).

An eval of a trained adapter (or of a model a full training run wrote) links to that training
run: the run whose output folder is the evaluated path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from factory.errors import ConfigError
from factory.store.database import DEFAULT_TIMEOUT, ENV, Database, database_url, default_location
from factory.store.tables import EvalRunRow, ScoreRow, TrainingRunRow

if TYPE_CHECKING:
    from factory.eval.results import EvalResult, Scores

__all__ = ["ENV", "SCOPES", "ResultsStore", "RunInfo", "compare", "database_url", "default_location", "eval_run_row"]

SCOPES = ("overall", "category", "subject")


@dataclass
class RunInfo:
    """One stored eval run as history and compare show it."""

    id: int
    created_at: datetime
    command: str
    task: str
    model: str
    adapter: str | None
    metric: str
    score: float
    n: int
    duration_s: float
    factory_version: str
    settings: dict[str, Any]
    output_file: str | None
    scores: dict[tuple[str, str, str], tuple[float, int]]  # (scope, name, metric) -> (value, n)
    training_run: int | None = None  # the training run that wrote the evaluated adapter or model

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "scores"}
        data["created_at"] = self.created_at.isoformat()
        data["scores"] = [
            {"scope": scope, "name": name, "metric": metric, "value": value, "n": n}
            for (scope, name, metric), (value, n) in self.scores.items()
        ]
        return data


def eval_run_row(
    result: EvalResult, *, command: str, model: str, adapter: str | None, duration_s: float, factory_version: str
) -> EvalRunRow:
    """The row (with its score rows) that records one finished run."""
    row = EvalRunRow(
        created_at=datetime.now(timezone.utc),
        command=command,
        task=result.task,
        model=model,
        adapter=adapter,
        metric=result.metric,
        score=result.overall.values.get(result.metric, 0.0),
        n=result.overall.n,
        duration_s=duration_s,
        factory_version=factory_version,
        settings=result.settings,
        output_file=result.output_file,
    )
    groups: list[tuple[str, dict[str, Scores]]] = [
        ("overall", {"overall": result.overall}),
        ("category", result.categories),
        ("subject", result.subjects),
    ]
    row.scores = [
        ScoreRow(scope=scope, name=name, metric=metric, value=value, n=scores.n)
        for scope, table in groups
        for name, scores in table.items()
        for metric, value in scores.values.items()
    ]
    return row


class ResultsStore:
    """Record eval runs and read them back; the tables are created on first use."""

    def __init__(self, location: str | Database | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.db = location if isinstance(location, Database) else Database(location, timeout=timeout)
        self.url = self.db.shown

    def record(
        self,
        result: EvalResult,
        *,
        command: str,
        model: str,
        adapter: str | None,
        duration_s: float,
        factory_version: str,
    ) -> int:
        """Store one finished run; returns its id (a :class:`StoreError` if the database refuses it)."""
        row = eval_run_row(
            result,
            command=command,
            model=model,
            adapter=adapter,
            duration_s=duration_s,
            factory_version=factory_version,
        )

        def add(session: Session) -> int:
            session.add(row)
            session.flush()
            return row.id

        return self.db.write(add)

    def runs(self, limit: int | None = 20) -> list[RunInfo]:
        """The latest runs, newest first."""
        query = select(EvalRunRow).order_by(EvalRunRow.id.desc())
        if limit:
            query = query.limit(limit)
        with self.db.session() as session:
            rows = list(session.scalars(query))
            links = _training_links(session, rows)
            return [_info(row, with_scores=False, training_run=links.get(row.id)) for row in rows]

    def get(self, run_id: int) -> RunInfo:
        with self.db.session() as session:
            row = session.get(EvalRunRow, run_id)
            if row is None:
                last = session.scalar(select(EvalRunRow.id).order_by(EvalRunRow.id.desc()).limit(1))
                known = f"runs go from 1 to {last}" if last else "it holds no runs yet"
                raise ConfigError(
                    f"run {run_id} is not in the results store {self.url} ({known}); see factory eval history"
                )
            return _info(row, with_scores=True, training_run=_training_links(session, [row]).get(row.id))

    def evaluations_of(self, output_dir: str) -> list[RunInfo]:
        """The eval runs of what a training run wrote to ``output_dir``, newest first."""
        query = (
            select(EvalRunRow)
            .where((EvalRunRow.adapter == output_dir) | (EvalRunRow.model == output_dir))
            .order_by(EvalRunRow.id.desc())
        )
        with self.db.session() as session:
            return [_info(row, with_scores=False) for row in session.scalars(query)]


def _training_links(session: Session, rows: list[EvalRunRow]) -> dict[int, int]:
    """Eval run id -> the newest training run whose output folder is the evaluated adapter or model."""
    paths = {path for row in rows for path in (row.adapter, row.model) if path}
    if not paths:
        return {}
    query = (
        select(TrainingRunRow.output_dir, TrainingRunRow.id)
        .where(TrainingRunRow.output_dir.in_(paths))
        .order_by(TrainingRunRow.id)
    )
    runs = {output_dir: run_id for output_dir, run_id in session.execute(query)}
    links = {}
    for row in rows:
        linked = runs.get(row.adapter) if row.adapter else None
        linked = linked if linked is not None else runs.get(row.model)
        if linked is not None:
            links[row.id] = linked
    return links


def compare(a: RunInfo, b: RunInfo) -> list[dict[str, Any]]:
    """Scores of two runs side by side (overall, categories, subjects), with B - A."""
    keys = sorted(set(a.scores) | set(b.scores), key=lambda k: (SCOPES.index(k[0]), k[1], k[2]))
    rows = []
    for key in keys:
        va, vb = a.scores.get(key, (None, 0))[0], b.scores.get(key, (None, 0))[0]
        scope, name, metric = key
        delta = vb - va if va is not None and vb is not None else None
        rows.append({"scope": scope, "name": name, "metric": metric, "a": va, "b": vb, "delta": delta})
    return rows


def _info(row: EvalRunRow, *, with_scores: bool, training_run: int | None = None) -> RunInfo:
    scores = {(s.scope, s.name, s.metric): (s.value, s.n) for s in row.scores} if with_scores else {}
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
    return RunInfo(
        id=row.id,
        created_at=created,
        command=row.command,
        task=row.task,
        model=row.model,
        adapter=row.adapter,
        metric=row.metric,
        score=row.score,
        n=row.n,
        duration_s=row.duration_s,
        factory_version=row.factory_version,
        settings=dict(row.settings or {}),
        output_file=row.output_file,
        scores=scores,
        training_run=training_run,
    )
