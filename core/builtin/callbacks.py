"""Built-in training callbacks."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_callbacks(register):
    register(
        "stop-on-nan",
        "factory.train.callbacks:STOP_ON_NON_FINITE",
        description="end the run in one sentence when the loss becomes NaN or infinite",
    )
