"""The tables: evaluation runs and their scores, training runs, jobs and job logs.

Times of training runs and jobs are seconds since 1970 from the database's own clock
(:class:`factory.store.database.epoch_now`), so workers on several machines compare them alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The tables of factory's database; :class:`factory.store.database.Database` creates them."""


class EvalRunRow(Base):
    """One finished eval or predict run."""

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


class ScoreRow(Base):
    __tablename__ = "factory_eval_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("factory_eval_runs.id"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # overall, category, subject
    name: Mapped[str] = mapped_column(String(256))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    run: Mapped[EvalRunRow] = relationship(back_populates="scores")


class TrainingRunRow(Base):
    """One training run, written as it goes: running, then succeeded, failed or cancelled."""

    __tablename__ = "factory_training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    stage: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(1024))
    adapter: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # the adapter it continued
    datasets: Mapped[list[str]] = mapped_column(JSON)
    output_dir: Mapped[str | None] = mapped_column(String(1024), nullable=True, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    plugins: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # sizes of the tokenized data sets
    loss_curve: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    eval_scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)  # step, total, eta_s, tokens_per_s
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str] = mapped_column(String(256))
    factory_version: Mapped[str] = mapped_column(String(64))


class JobRow(Base):
    """One queued, running or finished job (eval, predict or finetune)."""

    __tablename__ = "factory_jobs"
    __table_args__ = (Index("factory_jobs_claim", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(1024))
    task: Mapped[str | None] = mapped_column(String(128), nullable=True)
    submitted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    done: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)  # what else the runner reports (loss, tokens/s...)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    run_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # eval or train
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobLogRow(Base):
    """One line of a job's log."""

    __tablename__ = "factory_job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
