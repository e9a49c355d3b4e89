"""The job queue in the database, on SQLite and on a real PostgreSQL: claims, heartbeats, cancel, stale jobs.

Every test runs on both databases; the PostgreSQL server is the session's throwaway one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from factory.errors import ConfigError
from factory.eval.results import EvalResult, Scores
from factory.store.evals import ResultsStore, eval_run_row
from factory.store.jobs import MAX_ATTEMPTS, JobLost, JobQueue, parse_statuses
from factory.store.tables import EvalRunRow


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


def submit(queue: JobQueue, priority: int = 0, kind: str = "eval", **config) -> int:
    return queue.submit(kind, {"model": "m", "task": "cmmlu", **config}, priority=priority).id


def test_claims_take_the_highest_priority_then_the_oldest(url):
    queue = JobQueue(url)
    ids = {name: submit(queue, priority) for name, priority in [("a", 0), ("b", 5), ("c", 1), ("d", 5), ("e", 0)]}
    finetune = submit(queue, 9, kind="finetune")
    claimed = []
    while (job := queue.claim("w", ["eval", "predict"])) is not None:
        claimed.append(job.id)
        assert job.status == "running" and job.worker == "w" and job.attempts == 1 and job.config["model"] == "m"
    assert claimed == [ids["b"], ids["d"], ids["c"], ids["a"], ids["e"]]  # the finetune job is not this worker's kind
    assert queue.counts() == {"queued": 1, "running": 5, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert queue.claim("t", ["finetune"]).id == finetune


def test_a_job_config_can_name_its_own_id(url):
    queue = JobQueue(url)
    job = queue.submit("eval", lambda job_id: {"model": "m", "output_dir": f"/out/job-{job_id}"})
    assert queue.get(job.id).config["output_dir"] == f"/out/job-{job.id}"


def test_concurrent_claimers_never_share_a_job(url):
    queue = JobQueue(url)
    ids = {submit(queue, priority % 3) for priority in range(40)}
    taken: list[list[int]] = [[] for _ in range(4)]

    def claim_all(index: int) -> None:
        mine = JobQueue(url)  # its own engine and connections, as another process would have
        while (job := mine.claim(f"w{index}", ["eval"])) is not None:
            taken[index].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = [job_id for claimed in taken for job_id in claimed]
    assert sorted(everything) == sorted(ids) and len(set(everything)) == len(everything)


def test_heartbeat_reports_progress_and_cancel(url):
    queue = JobQueue(url)
    job_id = submit(queue)
    queue.claim("w", ["eval"])
    assert queue.heartbeat(job_id, "w", done=3, total=10, eta_s=7.0, progress={"loss": 1.5}) is False
    job = queue.get(job_id)
    assert (job.done, job.total, job.eta_s, job.progress) == (3, 10, 7.0, {"loss": 1.5})
    assert job.heartbeat_at >= job.started_at
    with pytest.raises(JobLost, match=f"job {job_id} is no longer held by worker other"):
        queue.heartbeat(job_id, "other")
    cancelled = queue.cancel(job_id)
    assert cancelled.status == "running" and cancelled.cancel_requested
    assert queue.heartbeat(job_id, "w") is True
    queue.finish(job_id, "w", "cancelled", message="cancelled at 3/10")
    assert [line.message for line in queue.logs(job_id)] == [
        "submitted (eval, priority 0)",
        "claimed by worker w (attempt 1 of 2)",
        "cancel requested; worker w stops at its next batch",
        "cancelled at 3/10",
    ]
    with pytest.raises(
        ConfigError, match=f"job {job_id} has already cancelled; only queued and running jobs can be cancelled"
    ):
        queue.cancel(job_id)


def test_a_cancelled_queued_job_is_never_claimed(url):
    queue = JobQueue(url)
    first, second = submit(queue, 1), submit(queue)
    assert queue.cancel(first).status == "cancelled"
    assert queue.claim("w", ["eval"]).id == second
    assert queue.claim("w", ["eval"]) is None
    with pytest.raises(ConfigError, match=r"there is no job 999 in .*; see factory jobs list"):
        queue.cancel(999)


def test_a_silent_worker_s_job_is_requeued_once_then_failed(url):
    queue = JobQueue(url)
    job_id = submit(queue)
    stale = 0.3
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = queue.claim(f"dead{attempt}", ["eval"])
        assert job.id == job_id and job.attempts == attempt
        assert queue.requeue_stale(stale) == []  # it just beat
        time.sleep(stale + 0.2)
        [changed] = queue.requeue_stale(stale)
        assert changed.status == ("queued" if attempt < MAX_ATTEMPTS else "failed")
    job = queue.get(job_id)
    assert job.status == "failed" and job.worker == f"dead{MAX_ATTEMPTS}"
    assert job.error.startswith(f"worker dead{MAX_ATTEMPTS} stopped heartbeating (")
    assert job.error.endswith(f"on attempt {MAX_ATTEMPTS} of {MAX_ATTEMPTS}; the job is not retried again")
    messages = [line.message for line in queue.logs(job_id)]
    assert any(message.startswith("requeued: worker dead1 stopped heartbeating") for message in messages)
    with pytest.raises(JobLost):  # the first worker, if it comes back, may not write anything
        queue.finish(job_id, "dead1", "succeeded")


def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_requeued(url):
    queue = JobQueue(url)
    job_id = submit(queue)
    queue.claim("dead", ["eval"])
    queue.cancel(job_id)
    time.sleep(0.5)
    [changed] = queue.requeue_stale(0.3)
    assert changed.status == "cancelled" and queue.claim("w", ["eval"]) is None


def test_a_released_job_goes_back_without_using_an_attempt(url):
    queue = JobQueue(url)
    job_id = submit(queue)
    queue.claim("stopping", ["eval"])
    queue.release(job_id, "stopping", "the worker is stopping")
    job = queue.claim("next", ["eval"])
    assert job.id == job_id and job.attempts == 1


def result() -> EvalResult:
    return EvalResult(
        task="cmmlu",
        metric="accuracy",
        overall=Scores({"accuracy": 0.5}, 4),
        subjects={"anatomy": Scores({"accuracy": 0.5}, 4)},
    )


def test_a_result_and_its_job_are_written_together_or_not_at_all(url):
    queue = JobQueue(url)
    job_id = submit(queue)
    queue.claim("w", ["eval"])

    def record(session) -> tuple[str, int]:
        row = eval_run_row(result(), command="eval", model="m", adapter=None, duration_s=1.0, factory_version="0")
        session.add(row)
        session.flush()
        return "eval", row.id

    with pytest.raises(JobLost):  # another worker's finish: the eval row is rolled back with it
        queue.finish(job_id, "intruder", "succeeded", result={"x": 1}, record=record)
    with queue.db.session() as session:
        assert session.scalars(select(EvalRunRow)).all() == []
    queue.finish(job_id, "w", "succeeded", result={"x": 1}, record=record)
    job = queue.get(job_id)
    assert job.status == "succeeded" and job.run == f"eval-{job.run_id}" and job.result == {"x": 1}
    assert ResultsStore(queue.db).get(job.run_id).score == 0.5


def test_finished_jobs_past_the_retention_are_forgotten(url):
    queue = JobQueue(url)
    ids = [submit(queue) for _ in range(5)]
    for job_id in ids[:4]:
        queue.claim("w", ["eval"])
        queue.finish(job_id, "w", "succeeded")
    assert queue.forget_finished(2) == 2
    assert [job.id for job in queue.list()] == [ids[4], ids[3], ids[2]]  # the queued one always stays
    assert queue.logs(ids[0]) == []


def test_listing_filters_by_status_and_kind(url):
    queue = JobQueue(url)
    running, queued, finetune = submit(queue, 2), submit(queue, 1), submit(queue, kind="finetune")
    queue.claim("w", ["eval"])
    assert [job.id for job in queue.list(statuses=["queued"])] == [finetune, queued]
    assert [job.id for job in queue.list(statuses=["running", "queued"], kinds=["eval"])] == [queued, running]
    listed = queue.list()[0]
    assert listed.config == {} and listed.result is None  # listings leave the heavy columns out
    with pytest.raises(ConfigError, match="status 'done' is not a job status; use one or more of queued, running"):
        parse_statuses("queued,done")


WRITER = """
import sys
from factory.store.jobs import JobQueue
queue = JobQueue(sys.argv[1])
for i in range(int(sys.argv[3])):
    queue.submit("eval", {"model": sys.argv[2], "task": "cmmlu"})
    job = queue.claim(sys.argv[2], ["eval"])
    if job is not None:
        print(job.id, flush=True)
"""


def test_two_processes_writing_one_sqlite_file_lose_no_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    JobQueue(url)  # the tables exist before the race
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, f"p{n}", "100"], stdout=subprocess.PIPE, text=True)
        for n in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    claimed = [int(line) for out in outputs for line in out.split()]
    queue = JobQueue(url)
    jobs = queue.list(limit=None)
    assert len(jobs) == 200 and {job.model for job in jobs} == {"p0", "p1"}
    assert len(claimed) == 200 and sorted(claimed) == sorted(job.id for job in jobs)  # each claimed once, by someone
    assert queue.counts()["running"] == 200


def test_the_database_clock_orders_jobs_across_machines(url):
    queue = JobQueue(url)
    before = time.time()
    job = queue.get(submit(queue))
    assert before - 2 <= job.submitted_at <= time.time() + 2  # seconds since 1970, from the database


def test_a_table_of_another_schema_is_refused_in_one_sentence(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE factory_jobs (id INTEGER PRIMARY KEY, kind TEXT)")
    with pytest.raises(ConfigError) as caught:
        JobQueue(str(path))
    message = str(caught.value)
    assert message.startswith(f"results_db 'sqlite:///{path}' holds a table 'factory_jobs' without the column 'status'")
    assert message.endswith("point results_db at a new database") and "\n" not in message
    assert Path(path).stat().st_size > 0
