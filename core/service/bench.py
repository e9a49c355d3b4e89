"""The service benchmark: what the queue costs per job, and listing 1,000 jobs, on SQLite and PostgreSQL.

``python -m factory.service.bench [--jobs N] [--output FILE]`` (``nox -s bench`` runs it) prints JSON:

- ``submit_to_claim_ms``: one job submitted and claimed by a worker (two transactions; the
  worker's polling pause is left out, it is a setting), median and 90th percentile over
  ``--jobs`` jobs; ``finish_ms``: the worker's third transaction, ending the job with its result;
- ``list_1000_ms``: ``JobQueue.list(limit=1000)`` over a table of 1,000 jobs, and
  ``http_list_1000_ms``: ``GET /v1/jobs?limit=1000`` through the app (keys, JSON), medians of 10.

PostgreSQL runs on a throwaway server of the machine's own binaries (see
:mod:`factory.store.throwaway`); goals: under 50 ms per job, under 200 ms per listing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from factory.store.jobs import JobQueue

CONFIG = {"model": "smollm2-135m-instruct", "task": "cmmlu", "subjects": ["anatomy"], "n_shot": 5, "max_samples": 100}


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median": round(1000 * statistics.median(ordered), 2),
        "p90": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2),
    }


def measure(url: str, jobs: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from factory.config import load_config
    from factory.infer.base import Engine
    from factory.service.app import create_app

    queue = JobQueue(url)
    cycle, finish = [], []
    for _ in range(jobs):
        started = time.perf_counter()
        queue.submit("eval", CONFIG)
        job = queue.claim("bench", ["eval"])
        claimed = time.perf_counter()
        assert job is not None
        queue.finish(job.id, "bench", "succeeded", result={"overall": {"values": {"accuracy": 0.5}, "n": 100}})
        cycle.append(claimed - started)
        finish.append(time.perf_counter() - claimed)
    for _ in range(1000 - jobs):
        queue.submit("eval", CONFIG)
    listing = []
    for _ in range(10):
        started = time.perf_counter()
        assert len(queue.list(limit=1000)) == 1000
        listing.append(time.perf_counter() - started)

    class Idle(Engine):  # the listing route needs no model
        template = tokenizer = None
        context_length = 0

        def stream(self, request: Any) -> Any:
            raise NotImplementedError

    client = TestClient(create_app(Idle(), load_config(None, [f"results_db={url}"]), worker=False))
    http = []
    for _ in range(10):
        started = time.perf_counter()
        reply = client.get("/v1/jobs?limit=1000")
        assert reply.status_code == 200 and len(reply.json()["data"]) == 1000
        http.append(time.perf_counter() - started)
    queue.db.dispose()
    return {
        "submit_to_claim_ms": _ms(cycle),
        "finish_ms": _ms(finish),
        "list_1000_ms": _ms(listing),
        "http_list_1000_ms": _ms(http),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from factory.store.throwaway import throwaway_postgres

    parser = argparse.ArgumentParser(prog="python -m factory.service.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=200, help="jobs timed through submit, claim and finish (at most 1000)"
    )
    parser.add_argument("--output", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    jobs = max(1, min(args.jobs, 1000))
    results: dict[str, Any] = {"jobs": jobs}
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = measure(f"sqlite:///{Path(folder) / 'bench.db'}", jobs)
    with throwaway_postgres() as server:
        results["postgresql"] = measure(server.new_database(), jobs)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return results


if __name__ == "__main__":  # pragma: no cover
    main()
