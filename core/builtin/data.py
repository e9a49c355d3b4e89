"""Built-in data set formats: alpaca, sharegpt, openai and plain text (factory.data.aligners)."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_aligners(register):
    register(
        "alpaca",
        "factory.data.aligners:ALPACA",
        description="instruction/input/output (+ system, history); chosen/rejected with ranking; KTO label",
    )
    register(
        "sharegpt",
        "factory.data.aligners:SHAREGPT",
        description="turns with role tags, function_call/observation turns, tools; preference pairs; KTO label",
    )
    register(
        "openai",
        "factory.data.aligners:OPENAI",
        description="OpenAI chat messages (tool role, assistant tool_calls); preference pairs; KTO label",
    )
    register("text", "factory.data.aligners:TEXT", description="plain text for pre-training")
