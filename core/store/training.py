"""Training runs: config, plugins with versions, data sizes, loss curve, eval scores, outputs, status.

A run is written when it starts (status ``running``), its loss curve and progress as it goes,
and its end (``succeeded``, ``failed`` with the reason, or ``cancelled``) when it stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from factory.errors import ConfigError
from factory.store.database import DEFAULT_TIMEOUT, Database, epoch_now
from factory.store.tables import TrainingRunRow

_LISTED = [c for c in TrainingRunRow.__table__.columns if c.name not in ("config", "loss_curve")]


@dataclass
class TrainingRunInfo:
    id: int
    status: str
    started_at: float
    finished_at: float | None
    duration_s: float | None
    stage: str
    method: str
    model: str
    adapter: str | None
    datasets: list[str]
    output_dir: str | None
    plugins: dict[str, Any]
    data: dict[str, Any]
    eval_scores: dict[str, Any]
    metrics: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    job_id: int | None
    host: str
    factory_version: str
    config: dict[str, Any] | None = None  # None in listings
    loss_curve: list[dict[str, Any]] | None = None  # None in listings

    @property
    def final_loss(self) -> float | None:
        """The last logged training loss (from the curve, or the run's metrics in a listing)."""
        curve = [point["loss"] for point in self.loss_curve or [] if "loss" in point]
        return curve[-1] if curve else self.metrics.get("last_loss")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run"] = f"train-{self.id}"
        return data


def _info(row: Any) -> TrainingRunInfo:
    data = (
        dict(row._mapping)
        if not isinstance(row, TrainingRunRow)
        else {c.name: getattr(row, c.name) for c in TrainingRunRow.__table__.columns}
    )
    return TrainingRunInfo(**data)


class TrainingRuns:
    """Record training runs and read them back."""

    def __init__(self, location: str | Database | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.db = location if isinstance(location, Database) else Database(location, timeout=timeout)
        self.url = self.db.shown

    def start(
        self,
        *,
        stage: str,
        method: str,
        model: str,
        adapter: str | None,
        datasets: Sequence[str],
        config: Mapping[str, Any],
        plugins: Mapping[str, Any],
        host: str,
        factory_version: str,
        job_id: int | None = None,
    ) -> int:
        def add(session: Session) -> int:
            row = TrainingRunRow(
                status="running",
                started_at=epoch_now(),
                stage=stage,
                method=method,
                model=model,
                adapter=adapter,
                datasets=list(datasets),
                config=dict(config),
                plugins=dict(plugins),
                data={},
                loss_curve=[],
                eval_scores={},
                metrics={},
                progress={},
                job_id=job_id,
                host=host,
                factory_version=factory_version,
            )
            session.add(row)
            session.flush()
            return row.id

        return self.db.write(add)

    def update(self, run_id: int, **values: Any) -> None:
        """Set columns of a run as it goes (``loss_curve``, ``progress``, ``output_dir``, ``data``...)."""

        def change(session: Session) -> None:
            row = session.get(TrainingRunRow, run_id)
            if row is not None:
                for name, value in values.items():
                    setattr(row, name, value)

        self.db.write(change)

    def finish(self, run_id: int, status: str, **values: Any) -> None:
        """Write a run's end: its status, and what it left (metrics, eval scores, loss curve, error...)."""

        def end(session: Session) -> None:
            row = session.get(TrainingRunRow, run_id)
            if row is None:
                return
            for name, value in values.items():
                setattr(row, name, value)
            row.status, row.finished_at = status, epoch_now()
            session.flush()
            session.refresh(row)
            row.duration_s = row.finished_at - row.started_at

        self.db.write(end)

    def list(self, limit: int | None = 20) -> list[TrainingRunInfo]:
        """The latest runs, newest first (without configs and curves)."""
        query = select(*_LISTED).order_by(TrainingRunRow.id.desc())
        if limit:
            query = query.limit(limit)
        with self.db.session() as session:
            return [_info(row) for row in session.execute(query)]

    def get(self, run_id: int) -> TrainingRunInfo:
        with self.db.session() as session:
            row = session.get(TrainingRunRow, run_id)
            if row is None:
                last = session.scalar(select(TrainingRunRow.id).order_by(TrainingRunRow.id.desc()).limit(1))
                known = f"training runs go from 1 to {last}" if last else "it holds no training runs yet"
                raise ConfigError(f"training run {run_id} is not in {self.url} ({known}); see factory runs list")
            return _info(row)


def compare_training(a: TrainingRunInfo, b: TrainingRunInfo) -> dict[str, Any]:
    """What differs between two training runs: the config keys set differently, and their outcomes side by side."""
    config_a, config_b = _flat(a.config or {}), _flat(b.config or {})
    settings = [
        {"key": key, "a": config_a.get(key), "b": config_b.get(key)}
        for key in sorted(set(config_a) | set(config_b))
        if config_a.get(key) != config_b.get(key) and key not in ("output_dir",)
    ]
    outcome_keys = ["final_loss", *sorted(set(a.eval_scores) | set(b.eval_scores)), "duration_s"]

    def outcome(run: TrainingRunInfo, key: str) -> Any:
        return (
            run.final_loss
            if key == "final_loss"
            else run.duration_s
            if key == "duration_s"
            else run.eval_scores.get(key)
        )

    outcomes = []
    for key in outcome_keys:
        va, vb = outcome(a, key), outcome(b, key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        outcomes.append({"key": key, "a": va, "b": vb, "delta": delta})
    return {"settings": settings, "outcomes": outcomes}


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
