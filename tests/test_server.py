"""The OpenAI-compatible server, driven by the official openai client and by raw HTTP (httpx).

The real server runs on a loopback port with SmolLM2-135M-Instruct; tool calls and message
mapping are checked with a scripted engine, which needs no model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from infer_helpers import ScriptedEngine, serve_in_thread
from openai import OpenAI

from factory.config import load_config
from factory.infer.base import load_engine
from factory.service.app import create_app

MODEL = "smollm2-135m-instruct"
API_KEY = "sk-factory-test"
WHO = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def served(smollm2_path):
    cfg = load_config(None, [f"model={MODEL}", f"api_key={API_KEY}", "max_new_tokens=16"])
    with load_engine(cfg) as engine, serve_in_thread(create_app(engine, cfg)) as url:
        yield SimpleNamespace(url=url, engine=engine)


@pytest.fixture
def client(served) -> OpenAI:
    return OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as session:
        yield session


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# -- with the real model -----------------------------------------------------------------------


def test_lists_the_served_model(client):
    assert [model.id for model in client.models.list().data] == [MODEL]


def test_answer_counts_its_tokens(client, served):
    reply = client.chat.completions.create(model=MODEL, messages=WHO, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    prompt = served.engine.tokenizer.apply_chat_template(WHO, add_generation_prompt=True, return_dict=True)
    assert reply.usage.prompt_tokens == len(prompt["input_ids"])
    answer = served.engine.tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 12 == len(answer)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_streamed_deltas_equal_the_plain_answer(client, http):
    plain = client.chat.completions.create(model=MODEL, messages=WHO, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=WHO, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3
    assert "".join(deltas) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()

    body = {"model": MODEL, "messages": WHO, "max_tokens": 4, "stream": True}
    raw = http.post("/v1/chat/completions", json=body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(event[6:])["object"] == "chat.completion.chunk" for event in events[:-1])


def test_eight_concurrent_requests_are_all_answered(client, served):
    questions = [
        "Who are you?",
        "Hi",
        "Name a fruit.",
        "What is 2+2?",
        "Name a color.",
        "Say hello.",
        "What is the capital of France?",
        "Name an animal.",
    ]

    def ask(question: str):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, questions))
    assert len({reply.id for reply in replies}) == 8
    assert all(reply.choices[0].message.content.strip() for reply in replies)
    assert served.engine.stats()["largest_batch"] > 1
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["running"] == 0 and health["queued"] == 0


def test_api_key_is_required(served):
    with pytest.raises(openai.AuthenticationError) as info:
        OpenAI(base_url=f"{served.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert info.value.status_code == 401
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": API_KEY}):
        response = httpx.post(
            f"{served.url}/v1/chat/completions", json={"model": MODEL, "messages": WHO}, headers=headers
        )
        assert assert_error_shape(response, 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{served.url}/health").status_code == 200  # health checks need no key


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "smollm2-135m-instruct", "messages": [', 400, None),
        (b"[1, 2]", 400, None),
        ({"model": "gpt-4o", "messages": WHO}, 404, "model"),
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"messages": WHO}, 400, "model"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"model": MODEL, "messages": WHO, "temperature": -0.5}, 400, "temperature"),
        ({"model": MODEL, "messages": WHO, "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "messages": WHO, "top_p": 1.5}, 400, "top_p"),
        ({"model": MODEL, "messages": WHO, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "messages": WHO, "n": 0}, 400, "n"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages.0.content",
        ),
    ],
)
def test_bad_requests_get_openai_errors(http, body, status, param):
    if isinstance(body, bytes):
        response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.post("/v1/chat/completions", json=body)
    error = assert_error_shape(response, status)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_route_is_an_openai_error(http):
    assert assert_error_shape(http.get("/v1/nothing"), 404)["code"] == "not_found"


def test_prompt_longer_than_the_context_is_refused_naming_both_lengths(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 9000}]}
    error = assert_error_shape(http.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    prompt_tokens = int(re.search(r"prompt is (\d+) tokens", error["message"]).group(1))
    assert prompt_tokens > 9000 and "8192" in error["message"]


def test_n_stop_and_seed(client):
    two = client.chat.completions.create(model=MODEL, messages=WHO, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == two.choices[1].message.content
    assert two.usage.completion_tokens == 12

    question = [{"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model=MODEL, messages=question, max_tokens=12, temperature=0)
    assert "Paris" in full.choices[0].message.content
    cut = client.chat.completions.create(model=MODEL, messages=question, max_tokens=12, temperature=0, stop=["Paris"])
    assert cut.choices[0].message.content == full.choices[0].message.content.split("Paris")[0]
    assert cut.choices[0].finish_reason == "stop"

    def sample():
        return client.chat.completions.create(model=MODEL, messages=WHO, max_tokens=6, temperature=1.0, seed=11)

    assert sample().choices[0].message.content == sample().choices[0].message.content


def test_disconnect_mid_stream_frees_the_slot(http, served):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 4000,
        "stream": True,
    }
    cancelled = served.engine.stats()["cancelled"]
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # one token arrived: hang up
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        health = http.get("/health").json()
        if health["running"] == 0 and health["queued"] == 0:
            break
        time.sleep(0.1)
    assert health["running"] == 0 and health["queued"] == 0  # 4000 tokens would take minutes here
    assert health["cancelled"] == cancelled + 1
    reply = http.post("/v1/chat/completions", json={"model": MODEL, "messages": WHO, "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2


def test_disconnect_while_waiting_for_a_plain_answer_cancels_it(http, served):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 4000}
    cancelled = served.engine.stats()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        http.post("/v1/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 15
    while served.engine.stats()["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = served.engine.stats()
    assert stats["cancelled"] == cancelled + 1 and stats["running"] == 0


# -- tool calls and message mapping (scripted engine, no model) --------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def scripted(answers: list[str], **settings):
    engine = ScriptedEngine(answers)
    cfg = load_config(None, [f"model={MODEL}", *(f"{k}={v}" for k, v in settings.items())])
    return engine, TestClient(create_app(engine, cfg))


def test_tool_call_answers_become_tool_calls():
    engine, client = scripted([CALL, "It is sunny in Paris."])
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    body = {"model": MODEL, "messages": history, "tools": TOOLS}
    reply = client.post("/v1/chat/completions", json=body).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    history += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "sunny"}'},
    ]
    reply = client.post("/v1/chat/completions", json={**body, "messages": history}).json()
    assert reply["choices"][0]["message"]["content"] == "It is sunny in Paris."
    assert reply["choices"][0]["finish_reason"] == "stop"

    request = engine.requests[-1]
    assert request.system == "Be brief."
    assert [m["role"] for m in request.messages] == ["user", "function_call", "observation"]
    assert json.loads(request.messages[1]["content"]) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert json.loads(request.tools)[0]["name"] == "get_weather"


def test_streamed_tool_call_and_tool_choice_none():
    _, client = scripted([CALL])
    body = {"model": MODEL, "messages": WHO, "tools": TOOLS, "stream": True}
    events = [
        json.loads(e[6:])
        for e in client.post("/v1/chat/completions", json=body).text.split("\n\n")
        if e.startswith("data: {")
    ]
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in events if c["choices"][0]["delta"].get("tool_calls")]
    assert calls and calls[0][0]["index"] == 0 and calls[0][0]["function"]["name"] == "get_weather"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"

    reply = client.post("/v1/chat/completions", json={**body, "stream": False, "tool_choice": "none"}).json()
    assert reply["choices"][0]["message"]["content"] == CALL and reply["choices"][0]["finish_reason"] == "stop"


def test_config_defaults_fill_what_the_client_leaves_out():
    engine, client = scripted(["ok"], max_new_tokens=7, temperature=0.3, top_p=0.9, system="Cfg system.")
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": WHO}).status_code == 200
    request = engine.requests[-1]
    assert (request.max_new_tokens, request.temperature, request.top_p, request.system) == (7, 0.3, 0.9, "Cfg system.")
    body = {"model": MODEL, "messages": WHO, "max_completion_tokens": 3, "temperature": 0, "stop": "x"}
    client.post("/v1/chat/completions", json=body)
    request = engine.requests[-1]
    assert (request.max_new_tokens, request.temperature, request.stop) == (3, 0, ("x",))


def test_served_model_name_is_what_clients_ask_for():
    _, client = scripted(["ok"], served_model_name="my-bot")
    assert client.get("/v1/models").json()["data"][0]["id"] == "my-bot"
    assert client.post("/v1/chat/completions", json={"model": "my-bot", "messages": WHO}).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": WHO}).status_code == 404


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_factory_serve_command(smollm2_path, tmp_path):
    """``factory serve`` in its own process: it starts, answers through the openai client, and stops on Ctrl-C."""
    command = [
        sys.executable,
        "-m",
        "factory.cli",
        "serve",
        f"model={MODEL}",
        "port=0",
        "api_key=k",
        "max_new_tokens=4",
    ]
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"Uvicorn running on (http://\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = match.group(1)
        assert f"serving '{MODEL}'" in log.read_text()
        reply = OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0).chat.completions.create(
            model=MODEL, messages=WHO, max_tokens=4
        )
        assert reply.usage.completion_tokens == 4
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
