"""The job service over HTTP: cancel, priorities, logs, run history, restarts, the served engine, finetune jobs.

The server runs its in-process worker (FastAPI lifespan) with a tiny random model; a finetune
job runs in a `Worker` taking finetune jobs from the same database.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from factory.config import load_config
from factory.infer.base import load_engine
from factory.service.app import create_app
from factory.service.worker import Worker
from factory.store.evals import ResultsStore
from factory.store.jobs import JobQueue
from factory.store.training import TrainingRuns

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"
DEMO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llamafactory-demo"
FAST = ["jobs.heartbeat_seconds=0.1", "jobs.stale_after_seconds=5", "jobs.poll_seconds=0.2"]


def server_config(tmp_path: Path, model: Path, *overrides: str):
    return load_config(
        None,
        [
            f"model={model}",
            f"results_db={tmp_path / 'results.db'}",
            f"jobs.output_dir={tmp_path / 'jobs'}",
            f"task_dir={CMMLU_DIR}",
            f"dataset_dir={DEMO_DIR}",
            "precision=fp32",
            *FAST,
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def tiny_engine(tiny_causal_lm, tmp_path_factory):
    cfg = server_config(tmp_path_factory.mktemp("engine"), tiny_causal_lm)
    with load_engine(cfg) as engine:
        yield engine


@pytest.fixture
def serve(tiny_engine, tiny_causal_lm):
    """Start apps (with their workers) on the module's engine; all stop when the test ends."""
    with ExitStack() as running:

        def start(tmp_path: Path, *overrides: str, worker: bool = True) -> TestClient:
            app = create_app(tiny_engine, server_config(tmp_path, tiny_causal_lm, *overrides), worker=worker)
            return running.enter_context(TestClient(app))

        yield start


def wait(client: TestClient, job_id: int, until=("succeeded", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in until:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


MC = {"task": "cmmlu", "n_shot": 0, "eval_batch_size": 1}


def test_a_multiple_choice_job_on_the_served_model_uses_the_server_s_copy(tmp_path, serve, tiny_engine):
    calls = []
    hook = tiny_engine.model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        client = serve(tmp_path)
        job = wait(
            client, client.post("/v1/evals", json={**MC, "subjects": ["anatomy"], "max_samples": 3}).json()["id"]
        )
    finally:
        hook.remove()
    assert job["status"] == "succeeded", job["error"]
    assert len(calls) >= 3  # every question went through the engine's model: a second copy would leave it untouched
    assert job["run"] == f"eval-{job['run_id']}" and job["result"]["overall"]["n"] == 3
    lines = client.get(f"/v1/evals/{job['id']}/logs").json()["data"]
    assert any(line["message"].endswith("with the served engine") for line in lines)


def test_cancel_a_queued_and_a_running_job(tmp_path, serve):
    client = serve(tmp_path)
    long = client.post("/v1/evals", json={**MC, "subjects": ["anatomy", "arts", "astronomy", "chinese_history"]}).json()
    queued = client.post("/v1/evals", json={**MC, "subjects": ["anatomy"], "max_samples": 2}).json()
    running = wait(client, long["id"], until=("running",))
    deadline = time.monotonic() + 60
    while not (running["progress"]["done"] or 0) > 0:  # scoring has begun
        assert time.monotonic() < deadline and running["status"] == "running", running
        running = client.get(f"/v1/evals/{long['id']}").json()
        time.sleep(0.02)

    assert client.post(f"/v1/evals/{queued['id']}/cancel").json()["status"] == "cancelled"
    asked = client.post(f"/v1/evals/{long['id']}/cancel").json()
    assert asked["status"] == "running" and asked["cancel_requested"] is True
    stopped = wait(client, long["id"])
    assert stopped["status"] == "cancelled" and stopped["result"] is None and stopped["run"] is None
    assert stopped["progress"]["done"] < stopped["progress"]["total"]
    assert wait(client, queued["id"])["started"] is None  # it never started

    log = [line["message"] for line in client.get(f"/v1/evals/{long['id']}/logs").json()["data"]]
    assert "cancel requested; worker" in log[-2] and log[-1].startswith("cancelled at ")
    assert log[-1].endswith("as requested; no results were written")
    queued_log = [line["message"] for line in client.get(f"/v1/evals/{queued['id']}/logs").json()["data"]]
    assert queued_log == ["submitted (eval, priority 0)", "cancelled before it started"]
    assert ResultsStore(str(tmp_path / "results.db")).runs() == []  # no results row for either
    reply = client.post(f"/v1/evals/{queued['id']}/cancel")
    assert reply.status_code == 400 and "has already cancelled" in reply.json()["error"]["message"]


def test_priorities_filters_logs_and_bad_queries(tmp_path, serve):
    client = serve(tmp_path, worker=False)
    low = client.post("/v1/evals", json={**MC, "subjects": ["anatomy"]}).json()
    high = client.post("/v1/evals", json={**MC, "subjects": ["arts"], "priority": 7}).json()
    assert (low["priority"], high["priority"], high["status"]) == (0, 7, "queued")
    claimed = JobQueue(str(tmp_path / "results.db")).claim("probe", ["eval"])
    assert claimed.id == high["id"]
    assert [job["id"] for job in client.get("/v1/evals?status=queued").json()["data"]] == [low["id"]]
    assert [job["id"] for job in client.get("/v1/jobs?status=running,queued").json()["data"]] == [high["id"], low["id"]]
    assert client.get("/v1/finetunes").json()["data"] == []
    jsonl = client.get(f"/v1/evals/{high['id']}/logs?format=jsonl")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [line["job_id"] for line in lines] == [high["id"]] * 2 and lines[1]["message"].startswith(
        "claimed by worker probe"
    )

    for path, param, says in [
        ("/v1/evals?status=done", "status", "status 'done' is not a job status"),
        ("/v1/evals?limit=0", "limit", "limit 0 must be between 1 and 1000"),
        ("/v1/runs?kind=training", "kind", "run kind 'training' is not one of train, eval"),
        (f"/v1/evals/{high['id']}/logs?format=xml", "format", "format 'xml' is not json or jsonl"),
    ]:
        reply = client.get(path)
        assert (
            reply.status_code == 400
            and reply.json()["error"]["param"] == param
            and says in reply.json()["error"]["message"]
        )
    for path in ("/v1/evals/eval-nope", "/v1/finetunes/1", "/v1/runs/train-99", "/v1/runs/nope"):
        reply = client.get(path)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found", path
    reply = client.post("/v1/evals", json={**MC, "priority": "high"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "priority"
    assert len(client.get("/v1/jobs").json()["data"]) == 2


def test_queued_jobs_survive_the_server_and_run_after_its_restart(tmp_path, serve):
    first = serve(tmp_path, worker=False)  # a server whose worker never gets to them
    ids = [
        first.post("/v1/evals", json={**MC, "subjects": [subject], "max_samples": 2}).json()["id"]
        for subject in ("anatomy", "arts")
    ]
    first.app.app.state.queue.db.dispose()
    second = serve(tmp_path)  # a new process, as far as the database is concerned
    jobs = [wait(second, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    runs = second.get("/v1/runs").json()["data"]
    assert sorted(run["run"] for run in runs) == sorted(job["run"] for job in jobs)
    run = second.get(f"/v1/runs/{jobs[0]['run']}").json()
    assert run["kind"] == "eval" and run["task"] == "cmmlu" and run["n"] == 2


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("output_dir", "/tmp/anywhere", "chooses where each job's outputs go"),
        ("resume", True, "jobs accept only"),
        ("trust_remote_code", True, "may never run code"),
        ("nproc", 4, "jobs accept only"),
        ("deepspeed", "ds.json", "jobs accept only"),
        ("report_to", ["wandb"], "jobs accept only"),
        ("quantization", "bnb-4bit", "plugin selection"),
        ("results_db", "/tmp/x.db", "its own results database"),
        ("galore", {"rank": 8}, "jobs accept only"),  # the options of an optimizer the job does not use
        ("task", "cmmlu", "jobs accept only"),
    ],
)
def test_forbidden_finetune_keys_are_refused_naming_them(tmp_path, serve, key, value, says):
    client = serve(tmp_path, worker=False)
    reply = client.post("/v1/finetunes", json={"dataset": "identity", "max_steps": 2, key: value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (
        error["message"].startswith(f"job key '{key}' is not accepted")
        and says in error["message"]
        and error["param"] == key
    )
    assert client.get("/v1/jobs").json()["data"] == []


def test_finetune_paths_come_from_the_allowlist(tmp_path, serve):
    client = serve(tmp_path, worker=False)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    for body in (
        {"dataset": str(outside)},
        {"eval_dataset": str(outside)},
        {"model": "/elsewhere/model"},
        {"adapter": str(tmp_path)},
    ):
        reply = client.post("/v1/finetunes", json={"max_steps": 2, **body})
        assert reply.status_code == 400, body
        assert reply.json()["error"]["param"] == next(iter(body))
    assert client.get("/v1/jobs").json()["data"] == []


def run_worker(tmp_path: Path, kinds: list[str], stop: threading.Event) -> threading.Thread:
    cfg = load_config(None, [f"results_db={tmp_path / 'results.db'}", *FAST])
    worker = Worker(cfg, kinds, name="trainer", quiet=True)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_a_finetune_job_trains_records_its_run_and_can_be_cancelled(tmp_path, serve, tiny_causal_lm):
    client = serve(tmp_path, worker=False)
    body = {
        "dataset": "identity",
        "max_steps": 3,
        "logging_steps": 1,
        "batch_size": 2,
        "lora": {"rank": 4},
        "sample_prompt": None,
    }
    done = client.post("/v1/finetunes", json={**body, "priority": 1}).json()
    long = client.post("/v1/finetunes", json={**body, "max_steps": 500}).json()
    assert done["kind"] == "finetune" and done["model"] == str(tiny_causal_lm)
    stop = threading.Event()
    thread = run_worker(tmp_path, ["finetune"], stop)
    try:
        job = wait(client, done["id"], timeout=300)
        assert job["status"] == "succeeded", job["error"]
        running = wait(client, long["id"], until=("running",), timeout=120)
        deadline = time.monotonic() + 120
        while not (running["progress"]["done"] or 0) >= 2:
            assert time.monotonic() < deadline, running
            running = client.get(f"/v1/finetunes/{long['id']}").json()
            time.sleep(0.05)
        client.post(f"/v1/finetunes/{long['id']}/cancel")
        cancelled = wait(client, long["id"], timeout=120)
    finally:
        stop.set()
        thread.join(timeout=120)

    runs = TrainingRuns(str(tmp_path / "results.db"))
    run = runs.get(job["run_id"])
    assert job["run"] == f"train-{run.id}" and run.job_id == job["id"] and run.status == "succeeded"
    assert [point["step"] for point in run.loss_curve if "loss" in point] == [1, 2, 3]
    assert (
        run.output_dir == str(tmp_path / "jobs" / f"job-{job['id']}")
        and (Path(run.output_dir) / "adapter_config.json").is_file()
    )
    assert run.config["lora"]["rank"] == 4 and run.plugins["peft"]["distribution"] == "factory-plugin-peft"
    assert job["progress"]["total"] == 3 and job["result"]["train_loss"] > 0

    assert cancelled["status"] == "cancelled" and cancelled["progress"]["done"] < 500
    stopped = runs.get(cancelled["run_id"])
    assert stopped.status == "cancelled" and stopped.error.startswith(f"job {long['id']} was cancelled at ")
    log = [line["message"] for line in client.get(f"/v1/finetunes/{long['id']}/logs").json()["data"]]
    assert any(message.startswith("step 1/500 loss ") for message in log)
