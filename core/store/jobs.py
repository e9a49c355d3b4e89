"""The job queue: jobs in the database, claimed atomically by any number of workers.

Why not a queue library: the well-kept ones either need a broker (Celery, RQ, Dramatiq: Redis or
RabbitMQ, one more server to run) or are PostgreSQL-only (procrastinate, pq), and factory's
zero-setup default is a SQLite file. A job is claimed with one atomic statement on both:

    UPDATE factory_jobs SET status='running', worker=..., attempts=attempts+1, ...
    WHERE id = (SELECT id FROM factory_jobs WHERE status='queued' AND kind IN (...)
                ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
      AND status='queued'
    RETURNING ...

On PostgreSQL, ``FOR UPDATE SKIP LOCKED`` lets concurrent claimers pass over a row another
claimer holds instead of waiting for it (and the outer ``status='queued'`` re-check means a row
is never taken twice). SQLite has no row locks: the statement runs inside ``BEGIN IMMEDIATE``,
under the database's single write lock, so claims are serialized (see
:mod:`factory.store.database`). The id orders jobs of equal priority: it is handed out in
submission order.

A running job's worker heartbeats; a job whose heartbeat is older than ``stale_after`` seconds
is requeued once (its worker died), and failed with the reason the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from factory.errors import ConfigError
from factory.store.database import DEFAULT_TIMEOUT, Database, StoreError, epoch_now
from factory.store.tables import JobLogRow, JobRow

KINDS = ("eval", "predict", "finetune")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_ATTEMPTS = 2  # a job whose worker stopped is requeued once, then failed


def parse_statuses(value: str | None) -> list[str]:
    """``queued,running`` -> ["queued", "running"] (empty: every status), refusing unknown ones."""
    statuses = [part.strip() for part in (value or "").split(",") if part.strip()]
    unknown = [part for part in statuses if part not in STATUSES]
    if unknown:
        raise ConfigError(f"status '{unknown[0]}' is not a job status; use one or more of {', '.join(STATUSES)}")
    return statuses


class JobLost(StoreError):
    """This worker no longer holds the job (it was requeued after a missed heartbeat, or is gone)."""


@dataclass
class JobInfo:
    """One job as the API, the CLI and workers see it."""

    id: int
    kind: str
    status: str
    priority: int
    model: str
    task: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    worker: str | None
    attempts: int
    done: int | None
    total: int | None
    eta_s: float | None
    progress: dict[str, Any]
    cancel_requested: bool
    error: str | None
    run_kind: str | None
    run_id: int | None
    config: dict[str, Any] = field(default_factory=dict)  # empty in listings
    result: dict[str, Any] | None = None  # None in listings

    @property
    def run(self) -> str | None:
        """The run this job produced, as ``eval-N`` or ``train-N``."""
        return f"{self.run_kind}-{self.run_id}" if self.run_kind and self.run_id is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "kind": self.kind,
            "status": self.status,
            "priority": self.priority,
            "model": self.model,
            "adapter": self.config.get("adapter"),
            "task": self.task,
            "created": self.submitted_at,
            "started": self.started_at,
            "finished": self.finished_at,
            "heartbeat": self.heartbeat_at,
            "worker": self.worker,
            "attempts": self.attempts,
            "progress": {"done": self.done, "total": self.total, "eta_s": self.eta_s, **self.progress},
            "cancel_requested": self.cancel_requested,
            "error": self.error,
            "run": self.run,
            "run_id": self.run_id,
            "result": self.result,
            "config": self.config or None,
        }


@dataclass
class LogLine:
    id: int
    job_id: int
    at: float
    level: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "job_id": self.job_id, "time": self.at, "level": self.level, "message": self.message}


_SUMMARY = [c for c in JobRow.__table__.columns if c.name not in ("config", "result")]


def _info(row: Any, *, full: bool) -> JobInfo:
    data = (
        dict(row._mapping)
        if not isinstance(row, JobRow)
        else {c.name: getattr(row, c.name) for c in JobRow.__table__.columns}
    )
    if not full:
        data.pop("config", None)
        data.pop("result", None)
    data["progress"] = dict(data.get("progress") or {})
    data["cancel_requested"] = bool(data["cancel_requested"])
    return JobInfo(**data)


class JobQueue:
    """Submit, claim, heartbeat, finish, cancel and list jobs in one database."""

    def __init__(self, location: str | Database | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.db = location if isinstance(location, Database) else Database(location, timeout=timeout)
        self.url = self.db.shown

    # -- submitting and reading ----------------------------------------------------------------

    def submit(
        self, kind: str, config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]], *, priority: int = 0
    ) -> JobInfo:
        """Queue a job; ``config`` may be a function of the new job's id (e.g. to name its output folder)."""
        if kind not in KINDS:
            raise ConfigError(f"job kind '{kind}' is not one of {', '.join(KINDS)}")

        def add(session: Session) -> JobInfo:
            row = JobRow(
                kind=kind,
                status="queued",
                priority=priority,
                config={},
                model="",
                submitted_at=epoch_now(),
                attempts=0,
                progress={},
                cancel_requested=False,
            )
            session.add(row)
            session.flush()
            settings = dict(config(row.id) if callable(config) else config)
            row.config, row.model, row.task = settings, str(settings.get("model", "")), settings.get("task")
            session.add(
                JobLogRow(
                    job_id=row.id, at=epoch_now(), level="info", message=f"submitted ({kind}, priority {priority})"
                )
            )
            session.flush()
            session.refresh(row)
            return _info(row, full=True)

        return self.db.write(add)

    def find(self, job_id: int) -> JobInfo | None:
        with self.db.session() as session:
            row = session.get(JobRow, job_id)
            return _info(row, full=True) if row is not None else None

    def get(self, job_id: int) -> JobInfo:
        job = self.find(job_id)
        if job is None:
            raise ConfigError(f"there is no job {job_id} in {self.url}; see factory jobs list")
        return job

    def list(
        self, *, statuses: Iterable[str] = (), kinds: Iterable[str] = (), limit: int | None = 100
    ) -> list[JobInfo]:
        """Jobs newest first, without their configs and results (see :meth:`get`)."""
        query = select(*_SUMMARY).order_by(JobRow.id.desc())
        statuses, kinds = list(statuses), list(kinds)
        if statuses:
            query = query.where(JobRow.status.in_(statuses))
        if kinds:
            query = query.where(JobRow.kind.in_(kinds))
        if limit:
            query = query.limit(limit)
        with self.db.session() as session:
            return [_info(row, full=False) for row in session.execute(query)]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status (every status, zero included)."""
        with self.db.session() as session:
            found = dict(session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).tuples().all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def durations(self) -> list[tuple[str, str, float]]:
        """(kind, status, seconds from start to finish) of every finished job that ran."""
        query = select(JobRow.kind, JobRow.status, JobRow.finished_at - JobRow.started_at).where(
            JobRow.status.in_(FINISHED), JobRow.started_at.is_not(None), JobRow.finished_at.is_not(None)
        )
        with self.db.session() as session:
            return [(kind, status, float(seconds)) for kind, status, seconds in session.execute(query)]

    # -- logs ----------------------------------------------------------------------------------

    def log(self, job_id: int, message: str, level: str = "info") -> None:
        self.db.write(
            lambda session: session.add(JobLogRow(job_id=job_id, at=epoch_now(), level=level, message=message))
        )

    def logs(self, job_id: int, *, after: int = 0) -> list[LogLine]:
        """The job's log lines with an id above ``after``, oldest first."""
        query = select(JobLogRow).where(JobLogRow.job_id == job_id, JobLogRow.id > after).order_by(JobLogRow.id)
        with self.db.session() as session:
            return [LogLine(r.id, r.job_id, r.at, r.level, r.message) for r in session.scalars(query)]

    # -- workers -------------------------------------------------------------------------------

    def claim(self, worker: str, kinds: Iterable[str]) -> JobInfo | None:
        """Take the highest-priority, oldest queued job of ``kinds`` for ``worker`` (None: nothing queued)."""
        pick = (
            select(JobRow.id)
            .where(JobRow.status == "queued", JobRow.kind.in_(list(kinds)))
            .order_by(JobRow.priority.desc(), JobRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(JobRow)
            .where(JobRow.id == pick, JobRow.status == "queued")
            .values(
                status="running",
                worker=worker,
                started_at=epoch_now(),
                heartbeat_at=epoch_now(),
                attempts=JobRow.attempts + 1,
                done=None,
                total=None,
                eta_s=None,
                progress={},
            )
            .returning(*JobRow.__table__.columns)
        )

        def take(session: Session) -> JobInfo | None:
            row = session.execute(claim).first()
            if row is None:
                return None
            job = _info(row, full=True)
            session.add(
                JobLogRow(
                    job_id=job.id,
                    at=epoch_now(),
                    level="info",
                    message=f"claimed by worker {worker} (attempt {job.attempts} of {MAX_ATTEMPTS})",
                )
            )
            return job

        return self.db.write(take)

    def heartbeat(
        self,
        job_id: int,
        worker: str,
        *,
        done: int | None = None,
        total: int | None = None,
        eta_s: float | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> bool:
        """Say ``worker`` is alive on the job (with its progress); True when a cancel was asked for."""
        values: dict[str, Any] = {"heartbeat_at": epoch_now(), "done": done, "total": total, "eta_s": eta_s}
        if progress is not None:
            values["progress"] = dict(progress)
        beat = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status == "running")
            .values(**values)
            .returning(JobRow.cancel_requested)
        )

        def touch(session: Session) -> bool:
            cancel = session.execute(beat).scalar()
            if cancel is None:
                raise JobLost(f"job {job_id} is no longer held by worker {worker}")
            return bool(cancel)

        return self.db.write(touch)

    def link_run(self, job_id: int, worker: str, run_kind: str, run_id: int) -> None:
        """Point the job at the run it is producing (a training run is linked as soon as it starts)."""
        self._owned(job_id, worker, run_kind=run_kind, run_id=run_id)

    def finish(
        self,
        job_id: int,
        worker: str,
        status: str,
        *,
        error: str | None = None,
        result: Mapping[str, Any] | None = None,
        record: Callable[[Session], tuple[str, int]] | None = None,
        message: str | None = None,
    ) -> None:
        """End a job ``worker`` holds; ``record(session)`` writes its run in the same transaction.

        The job's result and its run are therefore written together or not at all, and only by
        the worker that still holds the job (:class:`JobLost` otherwise).
        """

        def end(session: Session) -> None:
            values: dict[str, Any] = {"status": status, "finished_at": epoch_now(), "error": error, "eta_s": None}
            if record is not None:  # first: it may add the new run's id to the result
                values["run_kind"], values["run_id"] = record(session)
            if result is not None:
                values["result"] = dict(result)
            self._update_owned(session, job_id, worker, values)
            session.add(
                JobLogRow(
                    job_id=job_id,
                    at=epoch_now(),
                    level="error" if status == "failed" else "info",
                    message=message or status + (f": {error}" if error else ""),
                )
            )

        self.db.write(end)

    def release(self, job_id: int, worker: str, reason: str) -> None:
        """Hand a job back to the queue as if never claimed (its worker is shutting down)."""

        def back(session: Session) -> None:
            self._update_owned(
                session,
                job_id,
                worker,
                {
                    "status": "queued",
                    "worker": None,
                    "started_at": None,
                    "heartbeat_at": None,
                    "done": None,
                    "total": None,
                    "eta_s": None,
                    "attempts": JobRow.attempts - 1,
                },
            )
            session.add(
                JobLogRow(job_id=job_id, at=epoch_now(), level="warning", message=f"handed back to the queue: {reason}")
            )

        self.db.write(back)

    def cancel(self, job_id: int) -> JobInfo:
        """Cancel a queued job at once, or ask a running job's worker to stop at its next batch."""

        def stop(session: Session) -> None:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise ConfigError(f"there is no job {job_id} in {self.url}; see factory jobs list")
            if row.status in FINISHED:
                raise ConfigError(
                    f"job {job_id} has already {row.status}; only queued and running jobs can be cancelled"
                )
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", epoch_now()
                message = "cancelled before it started"
            else:
                row.cancel_requested = True
                message = f"cancel requested; worker {row.worker} stops at its next batch"
            session.add(JobLogRow(job_id=job_id, at=epoch_now(), level="info", message=message))

        self.db.write(stop)
        return self.get(job_id)

    def requeue_stale(self, stale_after: float) -> list[JobInfo]:
        """Requeue (once) or fail every running job whose worker has not heartbeaten for ``stale_after`` seconds."""
        stale = (
            select(JobRow)
            .where(JobRow.status == "running", JobRow.heartbeat_at < epoch_now() - stale_after)
            .with_for_update(skip_locked=True)
        )

        def sweep(session: Session) -> list[JobInfo]:
            now = session.scalar(select(epoch_now()))
            changed = []
            for row in session.scalars(stale):
                silent = (
                    f"worker {row.worker} stopped heartbeating ({now - (row.heartbeat_at or now):.0f} s without a sign)"
                )
                if row.cancel_requested:
                    row.status, row.finished_at, row.error = "cancelled", now, f"cancelled; {silent}"
                elif row.attempts < MAX_ATTEMPTS:
                    row.status, row.worker, row.heartbeat_at, row.started_at = "queued", None, None, None
                    row.done = row.total = row.eta_s = None
                else:
                    row.status, row.finished_at = "failed", now
                    row.error = f"{silent} on attempt {row.attempts} of {MAX_ATTEMPTS}; the job is not retried again"
                message = {"queued": f"requeued: {silent}", "failed": row.error or "", "cancelled": row.error or ""}[
                    row.status
                ]
                session.add(JobLogRow(job_id=row.id, at=now, level="warning", message=message))
                session.flush()
                changed.append(_info(row, full=False))
            return changed

        return self.db.write(sweep)

    def forget_finished(self, keep: int) -> int:
        """Delete all but the ``keep`` most recently finished jobs (and their logs); returns how many went."""

        def prune(session: Session) -> int:
            old = list(
                session.scalars(
                    select(JobRow.id)
                    .where(JobRow.status.in_(FINISHED))
                    .order_by(JobRow.finished_at.desc(), JobRow.id.desc())
                    .offset(keep)
                )
            )
            if old:
                session.execute(delete(JobLogRow).where(JobLogRow.job_id.in_(old)))
                session.execute(delete(JobRow).where(JobRow.id.in_(old)))
            return len(old)

        return self.db.write(prune)

    # -- helpers -------------------------------------------------------------------------------

    def _owned(self, job_id: int, worker: str, **values: Any) -> None:
        self.db.write(lambda session: self._update_owned(session, job_id, worker, values))

    @staticmethod
    def _update_owned(session: Session, job_id: int, worker: str, values: Mapping[str, Any]) -> None:
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status == "running")
            .values(**values)
            .returning(JobRow.id)
        ).first()
        if done is None:
            raise JobLost(f"job {job_id} is no longer held by worker {worker}")
