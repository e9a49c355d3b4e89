"""``factory serve``: the HTTP service around an engine (FastAPI + uvicorn).

The app is assembled here, in the service room: the request guard (keys, scopes, body size)
wraps everything, so no route parses a byte from a caller without a key; the inference routes
come from :mod:`factory.infer.server`, the job and run routes from :mod:`factory.service.jobs`,
``/metrics`` from :mod:`factory.service.metrics`. While the app runs (its lifespan), an
in-process worker takes eval and predict jobs from the queue with the server's engine.
The OpenAPI schema and its pages are off unless the operator sets ``openapi: true``, and then
they sit behind the key like every other route; only ``/health`` is public.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from factory import __version__
from factory.config import RunConfig
from factory.infer.base import Engine
from factory.infer.server import add_inference_routes, install_error_handlers
from factory.service.guard import SUBMIT, RequestGuard
from factory.service.jobs import JobDesk, add_job_routes
from factory.service.metrics import ServiceMetrics
from factory.service.worker import EVAL_KINDS, Worker
from factory.store.jobs import JobQueue

PUBLIC_PATHS = frozenset({"/health"})
SHUTDOWN_WAIT = 30.0  # seconds a stopping server waits for its worker to hand its job back


def api_keys(cfg: RunConfig) -> dict[str, str]:
    """Every key the server accepts and its scope (``api_key`` has full access)."""
    keys = dict(cfg.api_keys)
    if cfg.api_key:
        keys[cfg.api_key] = SUBMIT
    return keys


def create_app(engine: Engine, cfg: RunConfig, *, worker: bool = True) -> Any:
    """The ASGI app serving ``engine``, its jobs and its metrics, behind the request guard.

    The FastAPI app itself is ``app.app`` (``app.app.state.queue``, ``.worker``, ``.metrics``).
    ``worker=False`` leaves the jobs to ``factory worker`` processes.
    """
    queue = JobQueue(cfg.results_db, timeout=cfg.results_db_timeout)
    metrics = ServiceMetrics(engine, queue)
    in_process = Worker(cfg, EVAL_KINDS, queue=queue, engine=engine, quiet=True) if worker else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = (
            threading.Thread(target=in_process.run, args=(stop,), name="factory-serve-worker", daemon=True)
            if in_process
            else None
        )
        if thread is not None:
            thread.start()
        try:
            yield
        finally:
            stop.set()  # a running job is handed back to the queue at its next batch
            if thread is not None:
                await run_in_threadpool(thread.join, SHUTDOWN_WAIT)

    openapi = cfg.openapi
    app = FastAPI(
        title="factory",
        version=__version__,
        openapi_url="/openapi.json" if openapi else None,
        docs_url="/docs" if openapi else None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.queue, app.state.worker, app.state.metrics = queue, in_process, metrics
    install_error_handlers(app)
    add_inference_routes(app, engine, cfg)
    add_job_routes(app, JobDesk(cfg, queue))

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = await run_in_threadpool(metrics.render)
        return Response(body, media_type=content_type)

    guarded = RequestGuard(app, keys=api_keys(cfg), max_body_bytes=cfg.max_request_bytes, public_paths=PUBLIC_PATHS)
    return _Timed(metrics.middleware(guarded), app)


class _Timed:
    """The outermost layer: times and counts every request, refused ones included; ``.app`` is the FastAPI app."""

    def __init__(self, asgi: Any, app: FastAPI) -> None:
        self.asgi, self.app = asgi, app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)


def run_server(config: str | None, overrides: Iterable[str]) -> int:
    """Load the model into its engine and serve it until interrupted (``factory serve``)."""
    import uvicorn

    from factory.config import load_config
    from factory.infer.base import load_engine

    cfg = load_config(config, overrides)
    engine = load_engine(cfg, cfg.manager())
    try:
        app = create_app(engine, cfg)
        model_id = cfg.served_model_name or cfg.model
        auth = " (API key required)" if api_keys(cfg) else ""
        print(
            f"factory: serving '{model_id}' with the {cfg.engine} engine at http://{cfg.host}:{cfg.port}/v1{auth}",
            flush=True,
        )
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    finally:
        engine.close()
    return 0
