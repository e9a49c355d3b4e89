"""How a run tells the job it belongs to how far it is, and learns that it should stop.

A worker sets :data:`current` while it runs a job; the training recorder (a Trainer callback)
and the evaluators' progress callbacks report through it without knowing about workers or the
service, which sit above them. ``progress`` raises :class:`JobStopped` once the job was
cancelled (or taken away from this worker, or the worker is stopping), so the run stops at its
next batch or step.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from factory.errors import FactoryError


class JobStopped(FactoryError):
    """Stop the job's run without writing results: it was ``cancelled``, ``lost`` by this worker
    (requeued after missed heartbeats), or its worker is shutting ``down`` and hands it back."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def cancelled(self) -> bool:
        return self.reason == "cancelled"


class Reporter(Protocol):
    """What a running job offers the code it runs."""

    job_id: int

    def progress(self, done: int, total: int | None, **extra: Any) -> None:
        """Record how far the run is (raises :class:`JobStopped` when it should stop)."""

    def link_run(self, kind: str, run_id: int) -> None:
        """Point the job at the run it produces (``train`` or ``eval`` and the run's id)."""

    def log(self, message: str, level: str = "info") -> None:
        """Add a line to the job's log."""


current: ContextVar[Reporter | None] = ContextVar("factory_job_reporter", default=None)
