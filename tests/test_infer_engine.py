"""The inference engine contract and the built-in transformers engine (with the real SmolLM2)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from factory.data.template import PACKAGED
from factory.errors import ConfigError, PluginError
from factory.infer.base import GenerationRequest, GenerationResult, PromptTooLongError, RequestError, TextStream
from factory.infer.engine import held_back
from factory.infer.tools import extract_tool_calls

# -- pieces that need no model -----------------------------------------------------------------


def test_held_back_keeps_unfinished_characters_and_stop_prefixes():
    assert held_back("Hello wor", ()) == 0
    assert held_back("Hello \ufffd", ()) == 1
    assert held_back("Answer: 42\n", ("\n\n",)) == 1
    assert held_back("Answer: <|en", ("<|end|>",)) == 4
    assert held_back("Answer: <|en", ("STOP", "<|end|>")) == 4
    assert held_back("<|end|", ("<|end|>",)) == 6


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_tokens"),
    ],
)
def test_request_validates_sampling(settings, param):
    with pytest.raises(RequestError) as info:
        GenerationRequest(messages=[{"role": "user", "content": "hi"}], **settings)
    assert info.value.param == param


def test_text_stream_sync_and_async_consumers():
    def produce(stream: TextStream) -> None:
        for piece in ("a", "b", "c"):
            time.sleep(0.01)
            stream.push(piece)
        stream.finish(GenerationResult("abc", "stop", 1, 3))

    stream = TextStream(prompt_tokens=1)
    threading.Thread(target=produce, args=(stream,)).start()
    assert list(stream) == ["a", "b", "c"]
    assert stream.result.text == "abc"

    async def consume() -> list[str]:
        stream = TextStream(prompt_tokens=1)
        threading.Thread(target=produce, args=(stream,)).start()
        return [piece async for piece in stream]

    assert asyncio.run(consume()) == ["a", "b", "c"]


def test_text_stream_raises_the_producers_error_and_records_cancel():
    stream = TextStream(prompt_tokens=1)
    stream.push("x")
    stream.fail(RuntimeError("boom"))
    assert next(stream) == "x"
    with pytest.raises(RuntimeError, match="boom"):
        next(stream)
    assert not stream.cancelled
    stream.close()
    assert stream.cancelled


CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"zone": "Europe/Paris"})]


@pytest.mark.parametrize("name", PACKAGED.names())
def test_tool_calls_round_trip_through_each_template(name):
    """What a template renders as a function_call turn parses back to the same calls."""
    template = PACKAGED.get(name)
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "function_call", "content": json.dumps([{"name": n, "arguments": a} for n, a in CALLS])},
    ]
    answer = [segment.text for segment in template.render(messages, tokenizer=_Specials()) if segment.trainable][-1]
    for marker in [*template.stop_words, _Specials.eos_token]:  # generation stops before these
        answer = answer.split(marker)[0]
    assert extract_tool_calls(template, answer) == CALLS
    assert extract_tool_calls(template, "The weather in Paris is sunny.") is None


def test_tool_calls_tolerate_whitespace_and_json_string_arguments():
    template = PACKAGED.get("qwen2")
    text = '<tool_call>{"name":"f","arguments":"{\\"x\\": 1}"}</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    assert extract_tool_calls(template, text) == [("f", {"x": 1}), ("g", {})]
    assert extract_tool_calls(template, '<tool_call>{"name": "f"}</tool_call> and more') is None


class _Specials:
    bos_token = "<s>"
    eos_token = "</s>"


# -- the transformers engine with SmolLM2 ------------------------------------------------------

PROMPTS = ["Who are you?", "What is the capital of France?", "Hi", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    from factory.config import load_config
    from factory.infer.base import load_engine

    cfg = load_config(None, [f"model={smollm2_path}", "max_batch_size=8"])
    with load_engine(cfg) as engine:
        yield engine


def ask(prompt: str, **settings) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": prompt}], **{"max_new_tokens": 16, **settings})


def test_engine_is_registered_and_refuses_unknown_names(plugin_manager):
    from factory.config import load_config
    from factory.infer.base import load_engine

    assert plugin_manager.get("engines", "transformers").distribution == "factory-core"
    with pytest.raises(ConfigError, match="engine"):
        load_config(None, ["engine=[1]"])
    with pytest.raises(PluginError, match="unknown engine 'nope'"):
        load_engine(load_config(None, ["engine=nope"]))


def test_greedy_answer_matches_transformers_directly(engine, smollm2_greedy):
    result = engine.generate([ask("Who are you?", max_new_tokens=20)])[0]
    assert result.text == smollm2_greedy([{"role": "user", "content": "Who are you?"}], 20)
    assert result.finish_reason == "length" and result.completion_tokens == 20
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_dict=True
    )
    assert result.prompt_tokens == len(prompt["input_ids"])


def test_batched_greedy_equals_one_at_a_time(engine):
    before = engine.stats()["largest_batch"]
    together = engine.generate([ask(prompt) for prompt in PROMPTS])
    assert engine.stats()["largest_batch"] >= max(before, len(PROMPTS))
    alone = [engine.generate([ask(prompt)])[0] for prompt in PROMPTS]
    assert together == alone
    assert {r.finish_reason for r in together} == {"stop", "length"}  # short answers end on eos


def test_stream_deltas_add_up_to_the_answer(engine):
    stream = engine.stream(ask("Who are you?"))
    deltas = list(stream)
    assert len(deltas) > 3
    assert "".join(deltas) == stream.result.text == engine.generate([ask("Who are you?")])[0].text


def test_stop_strings_end_the_answer_and_are_never_streamed(engine):
    full = engine.generate([ask("What is the capital of France?")])[0].text
    assert "Paris" in full
    stream = engine.stream(ask("What is the capital of France?", stop=("Paris",)))
    deltas = list(stream)
    assert stream.result.text == full[: full.index("Paris")]
    assert stream.result.finish_reason == "stop"
    assert "".join(deltas) == stream.result.text and "P" not in "".join(deltas)[len(full[: full.index("Paris")]) :]


def test_cancel_frees_the_slot(engine):
    stream = engine.stream(ask("Write a long story about a dragon.", max_new_tokens=400))
    next(stream), next(stream)
    stream.close()
    rest = list(stream)
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens < 50 and len(rest) < 50
    deadline = time.monotonic() + 10
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats()["running"] == 0
    assert engine.generate([ask("Hi", max_new_tokens=4)])[0].completion_tokens > 0


def test_prompt_longer_than_the_context_names_both_lengths(engine):
    with pytest.raises(PromptTooLongError) as info:
        engine.stream(ask("word " * 9000))
    err = info.value
    assert err.context_length == 8192 and err.prompt_tokens > 8192
    assert str(err.prompt_tokens) in str(err) and "8192" in str(err)


def test_batches_group_compatible_requests_that_fit_the_context(engine):
    long_prompt = engine._row(ask("word " * 7000))  # ~7000 tokens, so at most ~1190 new ones
    short, short_greedy = engine._row(ask("Hi", max_new_tokens=2000)), engine._row(ask("Hello"))
    sampled = engine._row(ask("Hi", temperature=0.5))
    assert engine._fits([short], short_greedy)
    assert not engine._fits([short], sampled)  # different decoding settings
    assert not engine._fits([long_prompt], short)  # 7000 + 2000 padded positions would pass 8192
    assert engine._fits([long_prompt], short_greedy)
    assert not engine._fits([short_greedy] * engine.max_batch_size, short_greedy)


def test_seeded_sampling_is_reproducible(engine):
    def sample(seed: int) -> str:
        return engine.generate([ask("Tell me a joke.", temperature=1.0, seed=seed, max_new_tokens=8)])[0].text

    first = sample(7)
    assert sample(7) == first
    assert {sample(1), sample(2)} != {first}


def test_concurrent_callers_are_batched_and_all_answered(engine):
    results: dict[int, GenerationResult] = {}

    def call(index: int) -> None:
        results[index] = engine.generate([ask(PROMPTS[index % len(PROMPTS)], max_new_tokens=8)])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(8))
    assert all(result.text for result in results.values())
    for i in range(4):  # the same prompt gives the same greedy answer whichever batch it was in
        assert results[i].text == results[i + 4].text
