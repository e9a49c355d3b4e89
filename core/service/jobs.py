"""Jobs over HTTP: submit, list, show, cancel and read the logs of jobs; read the run history.

Routes (same keys and OpenAI-style errors as every other route):

- ``POST /v1/evals`` (eval or predict: a body of evaluation keys), ``POST /v1/finetunes``
  (a body of training keys); either may add ``"priority": N`` (higher runs first).
- ``GET /v1/evals``, ``/v1/finetunes``, ``/v1/jobs`` (every kind), filtered with
  ``?status=queued,running`` and ``?limit=N``; ``GET .../{id}`` (status, progress, result);
  ``POST .../{id}/cancel``; ``GET .../{id}/logs`` (``?after=LINE_ID``, ``?format=jsonl``).
- ``GET /v1/runs`` (training and eval runs, ``?kind=train|eval``), ``GET /v1/runs/{train-N|eval-N}``.

A body is read by allowlist (:mod:`factory.service.allowlist`) on top of the server's config and
validated before anything is queued: a refused or invalid body is a 400 and the queue is
unchanged. Each job's outputs go to ``jobs.output_dir/job-ID``, a folder of the server's choosing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Body, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from factory.config import MAX_COUNT, RunConfig
from factory.errors import ConfigError
from factory.infer.server import ApiError
from factory.service.allowlist import JobRefused, job_config
from factory.store.history import history, run_details
from factory.store.jobs import JobInfo, JobQueue, parse_statuses

DEFAULT_OUTPUTS = "outputs/jobs"
GROUPS: dict[str, tuple[str, ...]] = {"evals": ("eval", "predict"), "finetunes": ("finetune",), "jobs": ()}
LIST_LIMIT = 1000


def outputs_folder(cfg: RunConfig) -> Path:
    """Where jobs' output folders go (``jobs.output_dir``, default outputs/jobs), absolute."""
    return Path(cfg.jobs.output_dir or DEFAULT_OUTPUTS).expanduser().resolve()


def job_kind(cfg: RunConfig, group: str = "") -> str:
    """The kind of job a config is: finetune for ``/v1/finetunes``, predict for bleu-rouge, else eval."""
    if group == "finetunes":
        return "finetune"
    return "predict" if cfg.task == "bleu-rouge" else "eval"


def check_runnable(cfg: RunConfig, kind: str) -> None:
    """Refuse now, before queueing, every selected implementation the job could not run with."""
    if kind == "finetune":
        from factory.api import check_training_selection
        from factory.train.preflight import check_training

        check_training_selection(cfg, cfg.manager())
        check_training(cfg)
    else:
        from factory.eval.run import check_evaluation

        check_evaluation(cfg, cfg.manager())


def queue_config(queue: JobQueue, kind: str, data: dict[str, Any], outputs: Path, priority: int) -> JobInfo:
    """Queue a validated config (as a dict); its output folder, unless it names one, is ``outputs/job-ID``."""
    if data.get("output_dir"):
        return queue.submit(kind, data, priority=priority)
    return queue.submit(kind, lambda job_id: {**data, "output_dir": str(outputs / f"job-{job_id}")}, priority=priority)


def _priority(body: Any) -> tuple[Any, int]:
    """The body without its ``priority``, and the priority (a 400 naming it when it is not a whole number)."""
    if not isinstance(body, dict) or "priority" not in body:
        return body, 0
    body = dict(body)
    value = body.pop("priority")
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_COUNT:
        raise JobRefused(
            f"job priority {value!r} must be a whole number between {-MAX_COUNT} and {MAX_COUNT}", "priority"
        )
    return body, value


class JobDesk:
    """What the job routes do, apart from HTTP: validate and queue bodies, read jobs and runs."""

    def __init__(self, base: RunConfig, queue: JobQueue) -> None:
        self.base, self.queue = base, queue
        self.outputs = outputs_folder(base)

    def submit(self, group: str, body: Any) -> JobInfo:
        """Validate the body now (a ConfigError is the caller's 400) and queue it."""
        settings, priority = _priority(body)
        finetune = group == "finetunes"
        cfg = job_config(self.base, settings, self.outputs / "job-0", finetune=finetune)
        kind = job_kind(cfg, group)
        check_runnable(cfg, kind)
        return queue_config(self.queue, kind, {**cfg.to_dict(), "output_dir": None}, self.outputs, priority)

    def job(self, group: str, job_id: str) -> JobInfo:
        job = self.queue.find(int(job_id)) if job_id.isdigit() else None
        if job is None or (GROUPS[group] and job.kind not in GROUPS[group]):
            what = {"evals": "evaluation job", "finetunes": "finetune job", "jobs": "job"}[group]
            raise ApiError(
                404,
                f"no {what} '{job_id}'; POST /v1/{group if group != 'jobs' else 'evals'} returns the id to ask for",
                param="id",
                code="not_found",
            )
        return job

    def list(self, group: str, status: str | None, limit: int) -> list[JobInfo]:
        try:
            statuses = parse_statuses(status)
        except ConfigError as exc:
            raise ApiError(400, str(exc), param="status") from None
        if not 0 < limit <= LIST_LIMIT:
            raise ApiError(400, f"limit {limit} must be between 1 and {LIST_LIMIT}", param="limit")
        return self.queue.list(statuses=statuses, kinds=GROUPS[group], limit=limit)

    def runs(self, kind: str | None, limit: int) -> list[dict[str, Any]]:
        if not 0 < limit <= LIST_LIMIT:
            raise ApiError(400, f"limit {limit} must be between 1 and {LIST_LIMIT}", param="limit")
        try:
            return [{**run, "object": "run"} for run in history(self.queue.db, kind, limit)]
        except ConfigError as exc:
            raise ApiError(400, str(exc), param="kind") from None

    def run(self, ref: str) -> dict[str, Any]:
        try:
            return {**run_details(self.queue.db, ref), "object": "run"}
        except ConfigError as exc:  # not a run name, or not in the database
            raise ApiError(404, str(exc), param="id", code="not_found") from None


def add_job_routes(app: Any, desk: JobDesk) -> None:
    """Mount the job and run routes on the server's app."""

    def threaded(call: Callable[..., Any]) -> Callable[..., Any]:
        async def run(*args: Any) -> Any:
            return await run_in_threadpool(call, *args)

        return run

    for group in GROUPS:
        _add_group(app, desk, group, threaded)

    @app.get("/v1/runs")
    async def list_runs(kind: str | None = None, limit: int = 20) -> dict[str, Any]:
        return {"object": "list", "data": await threaded(desk.runs)(kind, limit)}

    @app.get("/v1/runs/{ref}")
    async def get_run(ref: str) -> dict[str, Any]:
        return await threaded(desk.run)(ref)


def _add_group(app: Any, desk: JobDesk, group: str, threaded: Callable[..., Any]) -> None:
    prefix = f"/v1/{group}"
    if group != "jobs":

        async def create(body: Any = Body(None)) -> JSONResponse:  # noqa: B008 - FastAPI's way to take any JSON
            job = await threaded(desk.submit)(group, body)
            return JSONResponse(job.to_dict(), status_code=202)

        app.add_api_route(prefix, create, methods=["POST"], status_code=202)

    async def listing(status: str | None = None, limit: int = 100) -> dict[str, Any]:
        jobs: Sequence[JobInfo] = await threaded(desk.list)(group, status, limit)
        return {"object": "list", "data": [job.to_dict() for job in jobs]}

    async def show(job_id: str) -> dict[str, Any]:
        return (await threaded(desk.job)(group, job_id)).to_dict()

    async def cancel(job_id: str) -> dict[str, Any]:
        job = await threaded(desk.job)(group, job_id)
        return (await threaded(desk.queue.cancel)(job.id)).to_dict()

    async def logs(request: Request, job_id: str, after: int = 0, format: str = "json") -> Any:  # noqa: A002 - the query name
        job = await threaded(desk.job)(group, job_id)
        if format not in ("json", "jsonl"):
            raise ApiError(400, f"format '{format}' is not json or jsonl", param="format")
        lines = await threaded(lambda: desk.queue.logs(job.id, after=after))()
        if format == "jsonl":
            text = "".join(json.dumps(line.to_dict(), ensure_ascii=False) + "\n" for line in lines)
            return Response(text, media_type="application/jsonl")
        return {"object": "list", "job_id": job.id, "status": job.status, "data": [line.to_dict() for line in lines]}

    app.add_api_route(prefix, listing, methods=["GET"])
    app.add_api_route(prefix + "/{job_id}", show, methods=["GET"])
    app.add_api_route(prefix + "/{job_id}/cancel", cancel, methods=["POST"])
    app.add_api_route(prefix + "/{job_id}/logs", logs, methods=["GET"])
