"""The service with real processes on a real PostgreSQL: `factory worker`s sharing one queue, a worker
killed with -9 mid-job, a server killed with jobs queued and started again.

Everything talks over loopback to the session's throwaway PostgreSQL; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from factory.config import load_config
from factory.store.jobs import JobInfo, JobQueue
from factory.store.tables import EvalRunRow

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"
FAST = ["jobs.heartbeat_seconds=0.2", "jobs.stale_after_seconds=2", "jobs.poll_seconds=0.3"]
STARTUP = 180  # seconds: a process imports torch and transformers before it is ready, on a busy machine


def eval_job(model: Path, subject: str, samples: int) -> dict:
    return load_config(
        None,
        [
            f"model={model}",
            "task=cmmlu",
            f"task_dir={CMMLU_DIR}",
            f"subjects=[{subject}]",
            "n_shot=0",
            f"max_samples={samples}",
            "eval_batch_size=1",
            "precision=fp32",
        ],
    ).to_dict()


def until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@contextmanager
def processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start factory commands with their stderr in files; kill whatever is left at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "factory.cli", *args], stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = tmp_path / f"{name}.log"  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)


def start_worker(start: Callable[..., subprocess.Popen], url: str, name: str, *extra: str) -> subprocess.Popen:
    proc = start(name, "worker", "kinds=eval", f"results_db={url}", *FAST, "--name", name, *extra)
    until(
        lambda: "taking eval jobs from" in proc.log_path.read_text() or proc.poll() is not None,
        STARTUP,
        f"worker {name}",
    )
    assert proc.poll() is None, proc.log_path.read_text()
    return proc


def eval_rows(queue: JobQueue) -> int:
    with queue.db.session() as session:
        return session.scalar(select(func.count()).select_from(EvalRunRow))


def test_two_workers_run_each_job_once_higher_priority_first(tmp_path, postgres_url, tiny_causal_lm):
    queue = JobQueue(postgres_url)
    priorities = [1, 6, 2, 5, 4, 3]
    ids = [queue.submit("eval", eval_job(tiny_causal_lm, "anatomy", 6), priority=p).id for p in priorities]
    with processes(tmp_path) as start:
        workers = [
            start(name, "worker", "kinds=eval", f"results_db={postgres_url}", *FAST, "--name", name, "--exit-idle", "4")
            for name in ("wa", "wb")
        ]
        for proc in workers:
            assert proc.wait(timeout=600) == 0, proc.log_path.read_text()
    jobs = [queue.get(job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded"] * 6, [(job.id, job.error) for job in jobs]
    assert [job.attempts for job in jobs] == [1] * 6 and eval_rows(queue) == 6
    assert len({job.run_id for job in jobs}) == 6
    assert {job.worker for job in jobs} == {"wa", "wb"}
    for a in jobs:  # claimed in priority order (two claims may run at the same instant)
        for b in jobs:
            if a.priority > b.priority:
                assert a.started_at <= b.started_at + 0.05, (a.priority, b.priority)


def test_a_worker_killed_mid_job_loses_it_to_the_other(tmp_path, postgres_url, tiny_causal_lm):
    queue = JobQueue(postgres_url)
    with processes(tmp_path) as start:
        workers = {name: start_worker(start, postgres_url, name) for name in ("wa", "wb")}
        job_id = queue.submit("eval", eval_job(tiny_causal_lm, "anatomy", 40)).id
        holder = until(lambda: (job := queue.get(job_id)).status == "running" and job.worker, 120, "the claim")
        os.kill(workers[holder].pid, signal.SIGKILL)
        survivor = "wb" if holder == "wa" else "wa"
        job: JobInfo = until(
            lambda: (job := queue.get(job_id)).status in ("succeeded", "failed") and job, 600, "the rerun"
        )
    assert job.status == "succeeded", job.error
    assert (job.worker, job.attempts) == (survivor, 2) and eval_rows(queue) == 1
    log = [line.message for line in queue.logs(job_id)]
    assert any(message.startswith(f"requeued: worker {holder} stopped heartbeating") for message in log), log
    assert f"claimed by worker {survivor} (attempt 2 of 2)" in log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_killed_with_jobs_queued_runs_them_after_its_restart(tmp_path, postgres_url, tiny_causal_lm):
    port = free_port()
    serve = [
        "serve",
        f"model={tiny_causal_lm}",
        f"results_db={postgres_url}",
        f"port={port}",
        f"task_dir={CMMLU_DIR}",
        f"jobs.output_dir={tmp_path / 'jobs'}",
        "precision=fp32",
        *FAST,
    ]
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    queue = JobQueue(postgres_url)
    with processes(tmp_path) as start:
        first = start("serve-1", *serve)
        until(ready, STARTUP, "the server")
        bodies = [
            {"task": "cmmlu", "subjects": ["anatomy"], "n_shot": 0, "eval_batch_size": 1, "max_samples": n}
            for n in (40, 3, 3)
        ]
        ids = [httpx.post(f"{base}/v1/evals", json=body, timeout=30).json()["id"] for body in bodies]
        until(lambda: queue.get(ids[0]).status == "running", 120, "the first job to start")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert [queue.get(job_id).status for job_id in ids] == ["running", "queued", "queued"]

        start("serve-2", *serve)
        until(ready, STARTUP, "the restarted server")
        jobs = [
            until(
                lambda job_id=job_id: (job := queue.get(job_id)).status in ("succeeded", "failed") and job,
                600,
                f"job {job_id}",
            )
            for job_id in ids
        ]
    assert [job.status for job in jobs] == ["succeeded"] * 3, [job.error for job in jobs]
    assert [job.attempts for job in jobs] == [2, 1, 1] and eval_rows(queue) == 3


@pytest.mark.parametrize("kinds", ["kinds=eval,train", "kinds="])
def test_a_worker_refuses_unknown_kinds(kinds, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "worker", kinds, f"results_db={tmp_path / 'r.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("error: worker kinds '")
        and "use a comma-separated list of eval, predict, finetune" in proc.stderr
    )
