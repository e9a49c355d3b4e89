"""``factory serve``: the HTTP service around an engine (FastAPI + uvicorn).

The app is assembled here, in the service room: the request guard (keys, scopes, body size)
wraps everything, so no route parses a byte from a caller without a key; the inference routes
come from :mod:`factory.infer.server` and the evaluation jobs from :mod:`factory.service.jobs`.
The OpenAPI schema and its pages are off unless the operator sets ``openapi: true``, and then
they sit behind the key like every other route; only ``/health`` is public.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from factory import __version__
from factory.config import RunConfig
from factory.infer.base import Engine
from factory.infer.server import add_inference_routes, install_error_handlers
from factory.service.guard import SUBMIT, RequestGuard
from factory.service.jobs import add_eval_routes

PUBLIC_PATHS = frozenset({"/health"})


def api_keys(cfg: RunConfig) -> dict[str, str]:
    """Every key the server accepts and its scope (``api_key`` has full access)."""
    keys = dict(cfg.api_keys)
    if cfg.api_key:
        keys[cfg.api_key] = SUBMIT
    return keys


def create_app(engine: Engine, cfg: RunConfig) -> Any:
    """The ASGI app serving ``engine`` and its evaluation jobs, behind the request guard.

    The FastAPI app itself is ``app.app`` (e.g. ``app.app.state.eval_jobs``).
    """
    openapi = cfg.openapi
    app = FastAPI(
        title="factory",
        version=__version__,
        openapi_url="/openapi.json" if openapi else None,
        docs_url="/docs" if openapi else None,
        redoc_url=None,
    )
    install_error_handlers(app)
    add_inference_routes(app, engine, cfg)
    add_eval_routes(app, engine, cfg)
    return RequestGuard(app, keys=api_keys(cfg), max_body_bytes=cfg.max_request_bytes, public_paths=PUBLIC_PATHS)


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
        print(f"factory: serving '{model_id}' with the {cfg.engine} engine at http://{cfg.host}:{cfg.port}/v1{auth}",
              flush=True)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    finally:
        engine.close()
    return 0
