"""Evaluation jobs queued through ``factory serve``: ``POST /v1/evals``, ``GET /v1/evals/{id}``.

A job's body holds evaluation keys (``task``, ``task_dir``, ``subjects``, ``n_shot``...), read by
allowlist (:mod:`factory.service.allowlist`) on top of the server's own config, so by default it
evaluates the served model. Jobs run one at a time on one worker thread, so evaluations never
fight each other over the CPU; a job on the served model runs through the server's engine
instead of loading a second copy. Its outputs go to a folder of the server's choosing.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Body
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from factory.config import RunConfig
from factory.errors import FactoryError
from factory.eval.run import check_evaluation, evaluate
from factory.infer.server import ApiError
from factory.service.allowlist import job_config

DEFAULT_OUTPUTS = "outputs/jobs"


@dataclass
class Job:
    id: str
    cfg: RunConfig
    status: str = "queued"  # queued, running, succeeded, failed
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "eval.job",
            "status": self.status,
            "task": self.cfg.task,
            "model": self.cfg.model,
            "adapter": self.cfg.adapter,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "run_id": (self.result or {}).get("run_id"),
            "result": self.result,
        }


class EvalJobs:
    """A FIFO of evaluation jobs and the single worker that runs them."""

    def __init__(self, base: RunConfig, engine: Any = None, runner: Callable[..., Any] = evaluate) -> None:
        self.base, self.engine, self._runner = base, engine, runner
        self.outputs = Path(base.jobs.output_dir or DEFAULT_OUTPUTS)
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self.lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="factory-eval-jobs", daemon=True)
        self._worker.start()

    def submit(self, settings: Any) -> Job:
        """Validate the job's config now (a ConfigError is the caller's 400) and queue it."""
        job_id = f"eval-{uuid.uuid4().hex[:12]}"
        cfg = job_config(self.base, settings, self.outputs / job_id)
        check_evaluation(cfg, cfg.manager())
        job = Job(job_id, cfg)
        with self.lock:
            self.jobs[job.id] = job
            self._forget_old()
        self._queue.put(job)
        return job

    def _forget_old(self) -> None:
        """Keep at most ``jobs.keep_finished`` finished jobs (the oldest go first)."""
        finished = [job for job in self.jobs.values() if job.finished is not None]
        for job in sorted(finished, key=lambda j: j.finished or 0)[: max(0, len(finished) - self.base.jobs.keep_finished)]:
            del self.jobs[job.id]

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.status, job.started = "running", time.time()
            try:
                same = (job.cfg.model, job.cfg.adapter) == (self.base.model, self.base.adapter)
                result = self._runner(job.cfg, progress=False, engine=self.engine if same else None)
                job.result, job.status = result.to_dict(), "succeeded"
            except Exception as exc:  # a job's failure is its status, never the worker's end
                job.error = str(exc) if isinstance(exc, FactoryError) else f"{exc.__class__.__name__}: {exc}"
                job.status = "failed"
            finally:
                job.finished = time.time()
                with self.lock:
                    self._forget_old()


def add_eval_routes(app: Any, engine: Any, cfg: RunConfig) -> EvalJobs:
    """Mount ``POST /v1/evals``, ``GET /v1/evals`` and ``GET /v1/evals/{id}`` on the server's app."""

    jobs = EvalJobs(cfg, engine)
    app.state.eval_jobs = jobs

    @app.post("/v1/evals", status_code=202)
    async def create_eval(body: Any = Body(None)) -> JSONResponse:  # noqa: B008 - FastAPI's way to take any JSON
        job = await run_in_threadpool(jobs.submit, body)
        return JSONResponse(job.to_dict(), status_code=202)

    @app.get("/v1/evals")
    async def list_evals() -> dict[str, Any]:
        with jobs.lock:
            listed = list(jobs.jobs.values())
        return {"object": "list", "data": [job.to_dict() for job in listed]}

    @app.get("/v1/evals/{job_id}")
    async def get_eval(job_id: str) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no evaluation job '{job_id}'; POST /v1/evals returns the id to ask for", param="id", code="not_found")
        return job.to_dict()

    return jobs
