"""The page's side of the job queue: submit, stop and watch jobs, read runs; all state lives in the database.

The page never trains in its own process: Start queues a ``finetune`` job in the same jobs table
the CLI (``factory jobs``) and the API server (``/v1/finetunes``) use, and makes sure a local
``factory worker`` is there to run it, started in its own session so that closing the browser,
or stopping the page, does not stop the run. Whatever the page shows (progress, loss curve,
log) is read back from the database on each refresh, so a reopened page, in any tab or by any
user, shows a running job live.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from factory.plugin_api import (
    FactoryError,
    JobQueue,
    check_runnable,
    job_kind,
    load_config,
    outputs_folder,
    queue_config,
    run_details,
    run_history,
)

ACTIVE = ("queued", "running")
# The page's worker stops after this long without a job (FACTORY_WEBUI_WORKER_IDLE: tests end theirs sooner).
WORKER_IDLE_SECONDS = float(os.environ.get("FACTORY_WEBUI_WORKER_IDLE", "600"))
HEARTBEAT_SECONDS = 1.0  # the page's worker reports progress this often (the page refreshes every 2 s)


class AlreadyTraining(FactoryError):
    """A finetune job is queued or running: a second one is not started by accident."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two pages on one machine check-and-submit one at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Desk:
    """Jobs and runs of the page's database (``results_db``)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.queue = JobQueue(base.results_db, timeout=base.results_db_timeout)
        self.outputs = outputs_folder(base)
        self._worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, data: Mapping[str, Any], *, finetune: bool) -> Any:
        """Validate ``data`` as the CLI does and queue it; raises the one-sentence FactoryError otherwise."""
        cfg = load_config(dict(data))
        kind = job_kind(cfg, "finetunes" if finetune else "evals")
        check_runnable(cfg, kind)
        with self._lock, _file_lock(self.outputs / ".webui-submit.lock"):
            if kind == "finetune":
                busy = self.active("finetune")
                if busy is not None:
                    raise AlreadyTraining(
                        f"finetune job {busy.id} is already {busy.status} on this machine; stop it or wait for it "
                        "to finish before starting another"
                    )
            job = queue_config(self.queue, kind, {**cfg.to_dict(), "output_dir": cfg.output_dir}, self.outputs, 0)
        self.ensure_worker()
        return job

    def ensure_worker(self) -> None:
        """Start a local worker for the queue unless the page's own one is still alive."""
        if self._worker is not None and self._worker.poll() is None:
            return
        args = [
            sys.executable,
            "-m",
            "factory.cli",
            "worker",
            "kinds=finetune,eval,predict",
            "--exit-idle",
            f"{WORKER_IDLE_SECONDS:g}",
            f"jobs.poll_seconds={min(self.base.jobs.poll_seconds, 1.0)}",
            f"jobs.heartbeat_seconds={min(self.base.jobs.heartbeat_seconds, HEARTBEAT_SECONDS)}",
        ]
        if self.base.results_db:
            args.append(f"results_db={self.base.results_db}")
        self.outputs.mkdir(parents=True, exist_ok=True)
        with open(self.outputs / "webui-worker.log", "ab") as log:
            self._worker = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def stop(self, kind: str) -> str:
        """Cancel the queued or running job of ``kind`` (a running one stops at its next step); what happened."""
        job = self.active(kind)
        if job is None:
            return f"no {kind} job is queued or running"
        job = self.queue.cancel(job.id)
        if job.status == "cancelled":
            return f"cancelled {kind} job {job.id} before it started"
        return f"asked {kind} job {job.id} to stop; it stops at its next step"

    # -- reading ---------------------------------------------------------------------------------

    def active(self, kind: str) -> Any | None:
        jobs = self.queue.list(statuses=ACTIVE, kinds=[kind], limit=1)
        return jobs[0] if jobs else None

    def latest(self, kinds: tuple[str, ...]) -> Any | None:
        """The running or queued job of these kinds, else the newest one: what a page shows when it opens."""
        for statuses in (ACTIVE, ()):
            jobs = self.queue.list(statuses=statuses, kinds=kinds, limit=1)
            if jobs:
                return self.queue.find(jobs[0].id)
        return None

    def log_text(self, job_id: int, limit: int = 200) -> str:
        lines = self.queue.logs(job_id)[-limit:]
        return "\n".join(
            f"{time.strftime('%H:%M:%S', time.localtime(line.at))} {line.level:5} {line.message}" for line in lines
        )

    def run(self, ref: str) -> dict[str, Any]:
        return run_details(self.queue.db, ref)

    def training(self, job: Any) -> dict[str, Any]:
        """The training run a finetune job records (loss curve, progress), once it has started."""
        return self.run(job.run) if job is not None and job.run else {}

    def runs(self, kind: str, limit: int = 50) -> list[dict[str, Any]]:
        return run_history(self.queue.db, kind, limit)


def progress_text(job: Any, run: dict[str, Any] | None = None) -> str:
    """One line: job, status, step/total, ETA, tokens/s and loss.

    A training run's own record (written at every logging step) is fresher than the job's
    heartbeat, and holds the last step once the job has finished, so it is preferred.
    """
    if job is None:
        return "no job yet"
    parts = [f"job {job.id} · {job.kind} · {job.status}"]
    progress = dict(job.progress)
    done, total, eta = job.done, job.total, job.eta_s
    if run and run.get("progress"):
        step = run["progress"]
        done, total, eta = step.get("step", done), step.get("total", total), step.get("eta_s", eta)
        progress.update(unit="steps", tokens_per_s=step.get("tokens_per_s"))
    curve = [point["loss"] for point in (run or {}).get("loss_curve") or [] if "loss" in point]
    if curve:
        progress["loss"] = curve[-1]
    if job.status == "succeeded" and total:
        done = total  # the last heartbeat may predate the last step
    if done is not None:
        parts.append(f"{done}/{total if total is not None else '?'} {progress.get('unit', '')}".strip())
    if eta is not None and job.status == "running":
        parts.append(f"ETA {eta:.0f} s")
    if progress.get("tokens_per_s"):
        parts.append(f"{progress['tokens_per_s']:.0f} tokens/s")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if job.run:
        parts.append(f"run {job.run}")
    if job.error:
        parts.append(job.error)
    return " · ".join(parts)
