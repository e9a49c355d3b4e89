"""Built-in data set formats (alpaca, sharegpt, openai, plain text) and data kinds (pretrain, supervised)."""

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


@hookimpl
def register_data_kinds(register):
    register("pretrain", "factory.data.kinds:PRETRAIN", description="plain text in cutoff_len chunks (stage pt)")
    register(
        "supervised", "factory.data.kinds:SUPERVISED", description="conversations trained on their answers (stage sft)"
    )
