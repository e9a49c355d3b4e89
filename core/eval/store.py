"""The results store: every eval/predict run, its settings and its scores, in any SQL database.

SQLAlchemy gives one code path for the default SQLite file and for a shared server database
(``results_db=postgresql://...``). Where the default file lives: ``results_db`` in the config,
else the ``FACTORY_RESULTS_DB`` environment variable, else ``results.db`` in the user's data
folder (platformdirs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, create_engine, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from factory.errors import ConfigError
from factory.eval.results import EvalResult, Scores

ENV = "FACTORY_RESULTS_DB"


class _Base(DeclarativeBase):
    pass


class RunRow(_Base):
    __tablename__ = "factory_eval_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    command: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(1024))
    adapter: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    metric: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    factory_version: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_file: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    scores: Mapped[list[ScoreRow]] = relationship(back_populates="run", cascade="all, delete-orphan")


class ScoreRow(_Base):
    __tablename__ = "factory_eval_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("factory_eval_runs.id"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # overall, category, subject
    name: Mapped[str] = mapped_column(String(256))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    run: Mapped[RunRow] = relationship(back_populates="scores")


SCOPES = ("overall", "category", "subject")


@dataclass
class RunInfo:
    """One stored run as history and compare show it."""

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

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "scores"}
        data["created_at"] = self.created_at.isoformat()
        data["scores"] = [
            {"scope": scope, "name": name, "metric": metric, "value": value, "n": n}
            for (scope, name, metric), (value, n) in self.scores.items()
        ]
        return data


def default_location() -> str:
    """The results database used when the config names none."""
    from platformdirs import user_data_path

    return os.environ.get(ENV) or str(user_data_path("factory") / "results.db")


def database_url(value: str | None) -> str:
    """An SQLAlchemy URL from ``results_db``: a URL as given, a file path as SQLite."""
    value = value or default_location()
    if "://" in value:
        return value
    path = Path(value).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


class ResultsStore:
    """Record runs and read them back; the tables are created on first use."""

    def __init__(self, location: str | None = None) -> None:
        url = database_url(location)
        self.engine: Engine = _connect(url)
        self.url = _shown(url)

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
        """Store one finished run; returns its id."""
        row = RunRow(
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
        with self._session() as session:
            session.add(row)
            session.commit()
            return row.id

    def runs(self, limit: int | None = 20) -> list[RunInfo]:
        """The latest runs, newest first."""
        query = select(RunRow).order_by(RunRow.id.desc())
        if limit:
            query = query.limit(limit)
        with self._session() as session:
            return [_info(row, with_scores=False) for row in session.scalars(query)]

    def get(self, run_id: int) -> RunInfo:
        with self._session() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                last = session.scalar(select(RunRow.id).order_by(RunRow.id.desc()).limit(1))
                known = f"runs go from 1 to {last}" if last else "it holds no runs yet"
                raise ConfigError(f"run {run_id} is not in the results store {self.url} ({known}); see factory eval history")
            return _info(row, with_scores=True)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


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


def _info(row: RunRow, *, with_scores: bool) -> RunInfo:
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
    )


def _shown(url: str) -> str:
    """The URL for messages, without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _connect(url: str) -> Engine:
    """An engine with its tables, or a ConfigError naming the URL and the fix."""
    shown = _shown(url)
    try:
        engine = create_engine(make_url(url))
    except NoSuchModuleError:  # a subclass of ArgumentError: the scheme names no dialect or driver
        raise ConfigError(
            f"results_db '{shown}' names a database or driver SQLAlchemy does not know; check the URL's scheme "
            "(e.g. sqlite:///PATH, postgresql+psycopg://...)"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"results_db '{shown}' is not a database URL; give a file path or an SQLAlchemy URL such as "
            "postgresql://user@host/db"
        ) from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"results_db '{shown}' needs the Python package '{exc.name}', which is not installed; pip install the driver for that database"
        ) from None
    try:
        _Base.metadata.create_all(engine)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(f"results_db '{shown}' cannot be opened ({reason}); check the path or URL and its permissions") from None
    return engine
