"""Built-in data set formats: alpaca, sharegpt, openai and plain text (factory.data.formats)."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_aligners(register):
    register(
        "alpaca",
        "factory.data.formats:ALPACA",
        description="instruction/input/output (+ system, history); chosen/rejected with ranking; KTO label",
    )
    register(
        "sharegpt",
        "factory.data.formats:SHAREGPT",
        description="turns with role tags, function_call/observation turns, tools; preference pairs; KTO label",
    )
    register(
        "openai",
        "factory.data.formats:OPENAI",
        description="OpenAI chat messages (tool role, assistant tool_calls); preference pairs; KTO label",
    )
    register("text", "factory.data.formats:TEXT", description="plain text for pre-training")
