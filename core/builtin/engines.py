"""Built-in inference engine: ``transformers`` (model.generate with batching and streaming)."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_engines(register):
    register(
        "transformers",
        "factory.infer.engine:TransformersEngine",
        description="model.generate: batched concurrent requests, streaming, any device torch runs on",
    )
