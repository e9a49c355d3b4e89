"""Evaluation jobs through the server: POST /v1/evals queues, GET /v1/evals/{id} reports, one worker."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from infer_helpers import ScriptedEngine

from factory.config import load_config
from factory.eval.metrics import METRICS
from factory.eval.store import ResultsStore
from factory.service.app import create_app

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"
ANSWERS = ["中国的首都是北京。", "2+2 equals 4."]


@pytest.fixture
def app_with():
    """Build clients whose apps run (lifespan: the in-process worker) until the test ends."""
    with ExitStack() as running:

        def make(tmp_path: Path, engine=None, *overrides: str) -> TestClient:
            settings = [
                "model=smollm2-135m-instruct",
                f"results_db={tmp_path / 'results.db'}",
                f"jobs.output_dir={tmp_path / 'jobs'}",
                "jobs.heartbeat_seconds=0.2",
                *overrides,
            ]
            return running.enter_context(
                TestClient(create_app(engine or ScriptedEngine(ANSWERS), load_config(None, settings)))
            )

        yield make


def wait(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/evals/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_predict_job_uses_the_served_engine_and_is_recorded(tmp_path, app_with):
    data = tmp_path / "qa.json"
    rows = [
        {"instruction": "中国的首都是哪里？", "input": "", "output": ANSWERS[0]},
        {"instruction": "2+2?", "input": "", "output": ANSWERS[1]},
    ]
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    engine = ScriptedEngine(ANSWERS)
    client = app_with(tmp_path, engine, f"jobs.allow_dirs=[{tmp_path}]")
    reply = client.post("/v1/evals", json={"task": "bleu-rouge", "dataset": str(data)})
    assert reply.status_code == 202 and reply.json()["status"] in ("queued", "running", "succeeded")
    job = wait(client, reply.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert [request.messages[-1]["content"] for request in engine.requests] == ["中国的首都是哪里？", "2+2?"]
    assert job["result"]["overall"]["values"] == pytest.approx(dict.fromkeys(METRICS, 100.0))
    stored = ResultsStore(str(tmp_path / "results.db")).get(job["run_id"])
    assert stored.task == "bleu-rouge" and stored.model == "smollm2-135m-instruct"
    assert [j["id"] for j in client.get("/v1/evals").json()["data"]] == [job["id"]]
    assert Path(stored.output_file).parent == tmp_path / "jobs" / f"job-{job['id']}"  # the server chose where it went


def test_jobs_run_one_at_a_time(tmp_path, tiny_causal_lm, app_with):
    client = app_with(tmp_path, None, f"jobs.allow_models=[{tiny_causal_lm}]", f"jobs.allow_dirs=[{CMMLU_DIR}]")
    body = {"model": str(tiny_causal_lm), "task": "cmmlu", "task_dir": str(CMMLU_DIR), "max_samples": 2, "n_shot": 0}
    ids = [
        client.post("/v1/evals", json={**body, "subjects": [subject]}).json()["id"] for subject in ("anatomy", "arts")
    ]
    first, second = (wait(client, job_id) for job_id in ids)
    assert first["status"] == second["status"] == "succeeded", (first["error"], second["error"])
    assert second["started"] >= first["finished"]
    assert list(first["result"]["subjects"]) == ["anatomy"] and first["result"]["overall"]["n"] == 2
    assert [run.id for run in ResultsStore(str(tmp_path / "results.db")).runs()] == [second["run_id"], first["run_id"]]


def test_bad_jobs(tmp_path, app_with):
    client = app_with(tmp_path)
    reply = client.post("/v1/evals", json={"task": "cmmlx"})
    assert (
        reply.status_code == 400 and "unknown task 'cmmlx'; did you mean 'cmmlu'?" in reply.json()["error"]["message"]
    )
    reply = client.post("/v1/evals", json={"tsk": "cmmlu"})
    assert reply.status_code == 400 and reply.json()["error"]["message"].startswith(
        "job key 'tsk' is not accepted; did you mean 'task'?"
    )
    reply = client.get("/v1/evals/eval-nope")
    assert reply.status_code == 404 and reply.json()["error"]["message"].startswith("no evaluation job 'eval-nope'")

    failing = client.post("/v1/evals", json={"task": "cmmlu"}).json()
    job = wait(client, failing["id"])
    assert job["status"] == "failed"
    assert (
        job["error"] == "task=cmmlu needs task_dir=DIR, a folder holding dev/ and test/ with one CSV file per subject"
    )
