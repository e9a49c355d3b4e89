"""`factory jobs submit|list|show|cancel|logs`, on the database directly and on a server (--server URL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from factory.cli import main
from factory.config import load_config
from factory.service.app import create_app
from factory.store.jobs import JobQueue

KEY = "sk-cli"
CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_on_the_database(tmp_path, capsys):
    db = f"results_db={tmp_path / 'jobs.db'}"
    config = tmp_path / "job.yaml"
    config.write_text(f"task: cmmlu\ntask_dir: {CMMLU_DIR}\nsubjects: [anatomy]\n")
    code, out, _ = run(capsys, "jobs", "submit", str(config), db, "n_shot=0", "--priority", "3", "--json")
    job = json.loads(out)
    assert code == 0 and (job["kind"], job["priority"], job["status"]) == ("eval", 3, "queued")
    assert job["config"]["output_dir"] == str(Path("outputs/jobs").resolve() / f"job-{job['id']}")
    code, out, _ = run(capsys, "jobs", "submit", db, "dataset=identity", "max_steps=2")
    assert code == 0 and out.strip() == "factory: queued job 2 (finetune, priority 0); see factory jobs show 2"
    run(capsys, "jobs", "submit", db, "task=bleu-rouge", "dataset=identity")

    code, out, _ = run(capsys, "jobs", "list", db, "--json")
    assert [(j["id"], j["kind"]) for j in json.loads(out)] == [(3, "predict"), (2, "finetune"), (1, "eval")]
    code, out, _ = run(capsys, "jobs", "cancel", "2", db)
    assert out.strip() == "factory: job 2 cancelled"
    code, out, _ = run(capsys, "jobs", "list", db, "--status", "queued", "--json")
    assert [j["id"] for j in json.loads(out)] == [3, 1]
    code, out, _ = run(capsys, "jobs", "show", "1", db)
    assert "job 1" in out and "eval" in out and "queued" in out and "priority 3" in out
    code, out, _ = run(capsys, "jobs", "logs", "2", db, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["message"] for line in lines] == ["submitted (finetune, priority 0)", "cancelled before it started"]
    assert {line["job_id"] for line in lines} == {2}

    for args, says in [
        (("jobs", "show", "9", db), "there is no job 9 in sqlite:///"),
        (("jobs", "cancel", "2", db), "job 2 has already cancelled; only queued and running jobs can be cancelled"),
        (("jobs", "list", db, "--status", "finished"), "status 'finished' is not a job status"),
        (("jobs", "submit", db, "task=cmmlx"), "unknown task 'cmmlx'; did you mean 'cmmlu'?"),
    ]:
        code, out, err = run(capsys, *args)
        assert code == 2 and err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1, err
    assert len(JobQueue(str(tmp_path / "jobs.db")).list()) == 3  # the refused submission queued nothing


def test_logs_follow_a_job_until_it_ends(tmp_path):
    db = tmp_path / "jobs.db"
    queue = JobQueue(str(db))
    job_id = queue.submit("eval", {"model": "m"}).id
    queue.claim("w", ["eval"])
    follower = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "jobs", "logs", str(job_id), f"results_db={db}", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
    )
    first = follower.stdout.readline()
    assert first.rstrip().endswith("info: submitted (eval, priority 0)")
    queue.log(job_id, "halfway")
    queue.finish(job_id, "w", "succeeded")
    assert follower.wait(timeout=60) == 0
    rest = follower.stdout.read()
    assert [line.split(": ", 1)[1] for line in rest.splitlines()] == [
        "claimed by worker w (attempt 1 of 2)",
        "halfway",
        "succeeded",
    ]


@pytest.fixture
def server(tmp_path):
    from infer_helpers import ScriptedEngine, serve_in_thread

    cfg = load_config(
        None,
        [
            f"api_key={KEY}",
            f"results_db={tmp_path / 'served.db'}",
            f"jobs.output_dir={tmp_path / 'jobs'}",
            f"task_dir={CMMLU_DIR}",
        ],
    )
    with serve_in_thread(create_app(ScriptedEngine(["ok"]), cfg, worker=False)) as url:
        yield url


def test_jobs_on_a_server(tmp_path, capsys, monkeypatch, server):
    monkeypatch.setenv("FACTORY_API_KEY", KEY)
    code, out, _ = run(
        capsys, "jobs", "submit", "task=cmmlu", "subjects=[anatomy]", "--priority", "2", "--server", server, "--json"
    )
    job = json.loads(out)
    assert code == 0 and (job["kind"], job["priority"]) == ("eval", 2)
    assert job["config"]["output_dir"] == str(tmp_path / "jobs" / f"job-{job['id']}")  # the server chose it
    code, out, _ = run(capsys, "jobs", "list", "--server", server, "--json")
    assert [j["id"] for j in json.loads(out)] == [job["id"]]
    code, out, _ = run(capsys, "jobs", "cancel", str(job["id"]), "--server", server)
    assert out.strip() == f"factory: job {job['id']} cancelled"
    code, out, _ = run(capsys, "jobs", "logs", str(job["id"]), "--server", server)
    assert out.splitlines()[-1].endswith("info: cancelled before it started")

    code, _, err = run(capsys, "jobs", "submit", "task=cmmlu", "trust_remote_code=true", "--server", server)
    assert code == 2 and err.startswith(
        f"error: the server {server} answered 400: job key 'trust_remote_code' is not accepted"
    )
    monkeypatch.delenv("FACTORY_API_KEY")
    code, _, err = run(capsys, "jobs", "list", "--server", server)
    assert code == 2 and err.strip().endswith("; set FACTORY_API_KEY to the server's key") and "answered 401" in err
    code, _, err = run(capsys, "jobs", "list", "--server", "http://127.0.0.1:9")
    assert code == 2 and err.startswith("error: cannot reach the server http://127.0.0.1:9 (")


def test_a_worker_logs_json_lines_each_with_its_job_id(tmp_path):
    import io

    from factory.service.worker import JobLog, Worker

    db = tmp_path / "jobs.db"
    queue = JobQueue(str(db))
    failing = queue.submit(
        "eval", load_config(None, ["task=cmmlu"]).to_dict()
    ).id  # no task_dir: it fails in one sentence
    worker = Worker(load_config(None, [f"results_db={db}"]), ["eval"], name="w1")
    stream = io.StringIO()
    worker.local = JobLog("w1", json_lines=True, stream=stream)
    assert worker.run(max_jobs=1) == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    about_job = [line for line in lines if line["job_id"] is not None]
    assert [line["message"].split(" (")[0] for line in about_job][:1] == ["claimed"]
    assert about_job[-1]["level"] == "error" and about_job[-1]["message"].startswith(
        "failed: task=cmmlu needs task_dir=DIR"
    )
    assert {line["job_id"] for line in about_job} == {failing} and {line["worker"] for line in lines} == {"w1"}
    job = queue.get(failing)
    assert job.status == "failed" and job.error.startswith("task=cmmlu needs task_dir=DIR")
