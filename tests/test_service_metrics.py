"""``GET /metrics``, read back with prometheus-client's own parser and checked against independent counts."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from factory.config import load_config
from factory.infer.base import load_engine
from factory.service.app import create_app
from factory.store.jobs import JobQueue

KEY = "sk-metrics"


@pytest.fixture(scope="module")
def engine(tiny_causal_lm, tmp_path_factory):
    cfg = load_config(
        None,
        [
            f"model={tiny_causal_lm}",
            "precision=fp32",
            "max_batch_size=4",
            f"results_db={tmp_path_factory.mktemp('m') / 'r.db'}",
        ],
    )
    with load_engine(cfg) as loaded:
        yield loaded


def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """metric sample name -> {sorted label items: value}."""
    reply = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_requests_tokens_batches_and_jobs(tmp_path, engine, tiny_causal_lm):
    db = tmp_path / "r.db"
    cfg = load_config(
        None,
        [
            f"model={tiny_causal_lm}",
            f"api_key={KEY}",
            f"results_db={db}",
            "max_new_tokens=8",
            f"jobs.output_dir={tmp_path / 'jobs'}",
        ],
    )
    client = TestClient(create_app(engine, cfg, worker=False), headers={"Authorization": f"Bearer {KEY}"})
    before = scrape(client)
    stats_before = engine.stats()

    answers = [
        client.post(
            "/v1/chat/completions",
            json={"model": str(tiny_causal_lm), "n": n, "messages": [{"role": "user", "content": "hi"}]},
        ).json()
        for n in (1, 3, 2)
    ]
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    queue = JobQueue(str(db))
    for priority in range(4):
        queue.submit("eval", {"model": "m", "task": "cmmlu"}, priority=priority)
    queue.claim("w", ["eval"])
    queue.cancel(queue.list(statuses=["queued"])[0].id)
    after = scrape(client)

    chat = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert after["factory_http_requests_total"][chat] - before.get("factory_http_requests_total", {}).get(chat, 0) == 3
    refused = (("method", "GET"), ("route", "unmatched"), ("status", "401"))
    assert after["factory_http_requests_total"][refused] >= 1  # refused before routing, still counted
    timed = (("method", "POST"), ("route", "/v1/chat/completions"))
    assert after["factory_http_request_duration_seconds_count"][timed] == after["factory_http_requests_total"][chat]

    generated = sum(answer["usage"]["completion_tokens"] for answer in answers)
    assert (
        after["factory_engine_generated_tokens_total"][()] - before["factory_engine_generated_tokens_total"][()]
        == generated
    )
    batches = engine.stats()["batches"] - stats_before["batches"]
    assert (
        batches >= 3
        and after["factory_engine_batches_total"][()] - before["factory_engine_batches_total"][()] == batches
    )
    batch_count = after["factory_engine_batch_size_count"][()] - before.get("factory_engine_batch_size_count", {}).get(
        (), 0
    )
    batch_sum = after["factory_engine_batch_size_sum"][()] - before.get("factory_engine_batch_size_sum", {}).get((), 0)
    assert (batch_count, batch_sum) == (
        batches,
        6,
    )  # every request of the three calls went through one batch or another

    with sqlite3.connect(db) as conn:  # the oracle: the jobs table itself
        table = dict(conn.execute("SELECT status, count(*) FROM factory_jobs GROUP BY status").fetchall())
    depth = {dict(labels)["status"]: value for labels, value in after["factory_jobs"].items()}
    assert depth == {
        status: table.get(status, 0) for status in ("queued", "running", "succeeded", "failed", "cancelled")
    }
    assert depth["queued"] == 2 and depth["running"] == 1 and depth["cancelled"] == 1

    assert after["process_resident_memory_bytes"][()] > 50 * 2**20 and "process_cpu_seconds_total" in after
    assert not [
        name for name in after if name.startswith("factory_gpu_")
    ]  # no GPU here: the series are absent, not zero


def test_metrics_need_the_key(tmp_path, engine, tiny_causal_lm):
    cfg = load_config(None, [f"model={tiny_causal_lm}", f"api_keys={{{KEY}: read}}", f"results_db={tmp_path / 'r.db'}"])
    client = TestClient(create_app(engine, cfg, worker=False))
    assert client.get("/metrics").status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    )  # a read key may scrape


def test_finished_job_durations_are_a_histogram(tmp_path, engine, tiny_causal_lm):
    db = tmp_path / "r.db"
    cfg = load_config(None, [f"model={tiny_causal_lm}", f"api_key={KEY}", f"results_db={db}"])
    client = TestClient(create_app(engine, cfg, worker=False))
    queue = JobQueue(str(db))
    for status in ("succeeded", "succeeded", "failed"):
        job = queue.submit("eval", {"model": "m"})
        queue.claim("w", ["eval"])
        queue.finish(job.id, "w", status)
    with sqlite3.connect(db) as conn:
        durations = dict(
            conn.execute("SELECT status, sum(finished_at - started_at) FROM factory_jobs GROUP BY status").fetchall()
        )
    samples = scrape(client)
    ok = (("kind", "eval"), ("status", "succeeded"))
    assert samples["factory_job_duration_seconds_count"][ok] == 2
    assert samples["factory_job_duration_seconds_sum"][ok] == pytest.approx(durations["succeeded"])
    assert samples["factory_job_duration_seconds_bucket"][(("kind", "eval"), ("le", "1.0"), ("status", "failed"))] == 1
