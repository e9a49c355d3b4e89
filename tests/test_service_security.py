"""What a key holder can reach through the service: job bodies by allowlist, keys before bodies, limits.

Driven through a real uvicorn server on loopback (for sizes, timing and memory) and FastAPI's
test client, with a scripted engine: none of this needs a model.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from infer_helpers import ScriptedEngine, serve_in_thread

from factory.config import load_config
from factory.service.app import create_app

KEY, READER = "sk-submit", "sk-read"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "smollm2-135m-instruct"
WHO = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture
def make_client():
    """Build clients whose apps run (lifespan: the in-process worker) until the test ends."""
    with ExitStack() as running:

        def make(tmp_path: Path, *overrides: str) -> TestClient:
            cfg = load_config(
                None,
                [
                    f"model={MODEL}",
                    f"api_key={KEY}",
                    f"api_keys={{{READER}: read}}",
                    f"results_db={tmp_path / 'results.db'}",
                    f"jobs.output_dir={tmp_path / 'jobs'}",
                    *overrides,
                ],
            )
            return running.enter_context(TestClient(create_app(ScriptedEngine(["ok"]), cfg), headers=AUTH))

        yield make


@pytest.fixture
def allowed(tmp_path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


@pytest.fixture
def client(tmp_path, allowed, make_client) -> TestClient:
    return make_client(tmp_path, f"jobs.allow_dirs=[{allowed}]")


def queued(client: TestClient) -> list:
    return client.get("/v1/evals").json()["data"]


def remote_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config asks transformers to import its own module, which writes ``marker``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilModel"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
            }
        )
    )
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return folder


def wait(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/evals/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


# -- job bodies ----------------------------------------------------------------------------------


def test_a_model_folder_with_remote_code_is_refused_and_never_runs(tmp_path, client):
    marker = tmp_path / "marker"
    evil = remote_code_model(tmp_path / "evil", marker)
    for body in (
        {"model": str(evil), "trust_remote_code": True, "task": "cmmlu"},
        {"model": str(evil), "task": "cmmlu"},
        {"trust_remote_code": True, "task": "cmmlu"},
    ):
        reply = client.post("/v1/evals", json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] in ("trust_remote_code", "model")
    assert queued(client) == [] and not marker.exists()


def test_an_allowed_model_still_never_runs_its_own_code(tmp_path, allowed, make_client):
    """Even a model the operator allows is loaded without trust_remote_code: the job fails, the module never runs."""
    marker = tmp_path / "marker"
    evil = remote_code_model(allowed / "evil", marker)
    client = make_client(
        tmp_path, f"jobs.allow_models=[{evil}]", f"jobs.allow_dirs=[{allowed}]", "trust_remote_code=true"
    )
    (allowed / "qa.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    reply = client.post(
        "/v1/evals", json={"model": str(evil), "task": "bleu-rouge", "dataset": str(allowed / "qa.json")}
    )
    assert reply.status_code == 202, reply.text
    job = wait(client, reply.json()["id"])
    assert job["status"] == "failed" and not marker.exists()


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("trust_remote_code", True, "may never run code"),
        ("results_db", "/tmp/new/deep/x.db", "its own results database"),
        ("results_db", "postgresql://attacker.example/db", "its own results database"),
        ("output_dir", "/tmp/anywhere", "chooses where each job's outputs go"),
        ("overwrite_output_dir", True, "chooses where each job's outputs go"),
        ("dataset_dir", "/etc", "server's dataset_dir"),
        ("plugins", {"disable": ["peft"]}, "operator's choice"),
        ("loader", "gguf", "plugin selection"),
        ("quantization", "bnb-4bit", "plugin selection"),
        ("patches", ["liger"], "plugin selection"),
        ("engine", "vllm", "plugin selection"),
        ("template", "chatml", "plugin selection"),
        ("api_key", "mine", "set by the operator"),
        ("jobs", {"allow_dirs": ["/"]}, "set by the operator"),
        ("deepspeed", "ds.json", "jobs accept only"),
        ("learning_rate", 1.0, "jobs accept only"),
    ],
)
def test_forbidden_job_keys_are_refused_naming_them(client, key, value, says):
    reply = client.post("/v1/evals", json={"task": "cmmlu", key: value})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["message"].startswith(f"job key '{key}' is not accepted") and says in error["message"]
    assert error["param"] == key
    assert queued(client) == []


def test_paths_outside_the_allowed_folders_are_refused_alike(tmp_path, client, allowed):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "data.csv").write_text("question,A,B,C,D,answer\nthe secret cell,1,2,3,4,A\n")
    (allowed / "escape").symlink_to(outside)
    cases = [
        ("task_dir", str(outside)),
        ("task_dir", str(allowed / ".." / "secret")),
        ("task_dir", str(allowed / "escape")),  # a link inside the allowed folder pointing out of it
        ("task_dir", "/nonexistent/folder"),
        ("dataset", str(outside / "data.csv")),
        ("dataset", "../secret/data.csv"),
        ("adapter", str(outside)),
    ]
    for key, value in cases:
        reply = client.post("/v1/evals", json={"task": "cmmlu", key: value})
        assert reply.status_code == 400, (key, value)
        message = reply.json()["error"]["message"]
        assert "outside the folders this server's jobs may read" in message and "secret cell" not in message
        assert "data.csv" not in message.replace(value, "")  # nothing listed beyond what was asked
    assert queued(client) == []


def test_job_outputs_go_where_the_server_says(tmp_path, client, allowed):
    (allowed / "qa.json").write_text(json.dumps([{"instruction": "q", "output": "ok"}]))
    job = wait(
        client, client.post("/v1/evals", json={"task": "bleu-rouge", "dataset": str(allowed / "qa.json")}).json()["id"]
    )
    assert job["status"] == "succeeded", job["error"]
    assert Path(job["result"]["output_file"]).parent == tmp_path / "jobs" / f"job-{job['id']}"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"task": "cmmlu", "seed": 2**70}, None),
        ({"task": "cmmlu", "seed": -1}, None),
        ({"task": "cmmlu", "n_shot": 10**12}, None),
        ({"task": "cmmlu", "max_samples": 2**64}, None),
        ({"task": "cmmlu", "temperature": 1e308}, None),
        ({"task": "cmmlu", "max_new_tokens": 2**63}, None),
        ([1, 2], None),
        ("cmmlu", None),
    ],
)
def test_out_of_range_job_numbers_are_400(client, body, param):
    reply = client.post("/v1/evals", json=body)
    assert reply.status_code == 400, reply.text
    assert queued(client) == []


# -- chat requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": -(2**64)}, "seed"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens"),
        ({"temperature": 1e308}, "temperature"),
        ({"top_p": 1e-400}, "top_p"),
        ({"n": 10**9}, "n"),
        ({"stop": ["x"] * 100}, "stop"),
    ],
)
def test_out_of_range_chat_numbers_are_400(tmp_path, extra, param, make_client):
    reply = make_client(tmp_path).post("/v1/chat/completions", json={"model": MODEL, "messages": WHO, **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


# -- keys before bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/evals", "/v1/models", "/openapi.json", "/docs", "/v1/nothing"]
)
def test_no_key_is_401_before_the_body_is_read(tmp_path, path, make_client):
    client = TestClient(make_client(tmp_path, "openapi=true").app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = client.post(path, content=b'{"model": [', headers={**headers, "Content-Type": "application/json"})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert client.get(path, headers=headers).status_code == 401
    assert client.get("/health").status_code == 200


def test_openapi_is_off_by_default_and_whole_behind_the_key(tmp_path, make_client):
    assert make_client(tmp_path).get("/openapi.json").status_code == 404
    assert make_client(tmp_path).get("/docs").status_code == 404
    schema = make_client(tmp_path, "openapi=true").get("/openapi.json")
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]


def test_a_read_key_reads_and_cannot_submit(tmp_path, make_client):
    client = make_client(tmp_path)
    read = {"Authorization": f"Bearer {READER}"}
    assert client.get("/v1/evals", headers=read).status_code == 200
    assert client.get("/v1/models", headers=read).status_code == 200
    for path, body in (("/v1/evals", {"task": "cmmlu"}), ("/v1/chat/completions", {"model": MODEL, "messages": WHO})):
        reply = client.post(path, json=body, headers=read)
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "insufficient_scope"
    assert queued(client) == []


# -- sizes, on a real server ---------------------------------------------------------------------


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    cfg = load_config(None, [f"api_key={KEY}", f"results_db={tmp / 'r.db'}", "max_request_bytes=1048576"])
    with serve_in_thread(create_app(ScriptedEngine(["ok"]), cfg)) as url:
        yield url


def test_a_declared_20mb_body_is_refused_unread_in_under_a_second(live):
    host, port = live.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        started = time.perf_counter()
        sock.sendall(
            f"POST /v1/evals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 2**20}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        assert time.perf_counter() - started < 1.0
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "larger than this server's limit of 1048576 bytes" in answer


def test_a_streamed_20mb_body_is_cut_off_at_the_limit_without_growing_the_server(live):
    before = _rss_mb()
    started = time.perf_counter()
    chunks = (b"x" * 2**20 for _ in range(20))
    try:
        reply = httpx.post(f"{live}/v1/chat/completions", content=chunks, headers=AUTH, timeout=30)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    except httpx.TransportError:
        pass  # the server may close the connection before the client has sent all of it
    assert time.perf_counter() - started < 5
    assert _rss_mb() - before < 50  # the 20 MB (and its parsing) never lands in the server
    assert httpx.get(f"{live}/health").status_code == 200
