"""``factory worker``: claim a job, run it, heartbeat its progress, write its results; repeat.

Any number of workers on any number of machines share one database; each claim is atomic
(:meth:`factory.store.jobs.JobQueue.claim`), so no job runs twice. While a job runs, a heartbeat
thread writes its progress every ``jobs.heartbeat_seconds`` and reads whether it was cancelled;
the run itself notices at its next batch (evaluators) or step (training), through the
progress callback, and stops without writing results. Every worker also requeues the jobs of
workers that stopped heartbeating (once; the second time the job fails with the reason).

An eval job's scores, its eval run and its status are written in one transaction, and only by
the worker that still holds the job. If that write fails, the result is saved as JSON in the
job's output folder, so no finished result is lost.

``factory serve`` runs one of these in a thread for eval and predict jobs, handing it the
server's engine, so a job on the served model never loads a second copy.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from factory.config import RunConfig, load_config
from factory.errors import ConfigError, FactoryError
from factory.store.database import StoreError
from factory.store.jobs import KINDS, JobInfo, JobLost, JobQueue
from factory.store.reporting import JobStopped, current

log = logging.getLogger(__name__)

EVAL_KINDS = ("eval", "predict")
SWEEP_EVERY = 0.5  # of stale_after_seconds: how often a worker looks for jobs of dead workers
FORGET_EVERY = 60.0  # seconds between prunes of finished jobs past jobs.keep_finished


def parse_kinds(value: str | Sequence[str]) -> list[str]:
    """``eval,predict`` -> ["eval", "predict"], refusing unknown kinds."""
    kinds = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)
    kinds = [kind for kind in kinds if kind]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"worker kinds '{','.join(unknown) or value}' are not job kinds; use a comma-separated list of "
            f"{', '.join(KINDS)}"
        )
    return kinds


class JobLog:
    """A worker's own lines (stderr), as text or JSON lines, each naming the job it is about."""

    def __init__(
        self, worker: str, *, json_lines: bool = False, stream: IO[str] | None = None, quiet: bool = False
    ) -> None:
        self.worker, self.json_lines, self.stream, self.quiet = worker, json_lines, stream or sys.stderr, quiet

    def emit(self, job_id: int | None, message: str, level: str = "info") -> None:
        if self.quiet:
            return
        if self.json_lines:
            line = json.dumps(
                {"time": time.time(), "worker": self.worker, "job_id": job_id, "level": level, "message": message},
                ensure_ascii=False,
            )
        else:
            line = f"factory worker {self.worker}: " + (f"job {job_id}: " if job_id is not None else "") + message
        print(line, file=self.stream, flush=True)


class RunningJob:
    """The :class:`~factory.store.reporting.Reporter` of one job: progress, heartbeats, cancel, log."""

    def __init__(
        self,
        queue: JobQueue,
        job: JobInfo,
        worker: str,
        heartbeat_seconds: float,
        local: JobLog,
        shutdown: threading.Event,
    ) -> None:
        self.queue, self.job, self.job_id, self.worker, self.local = queue, job, job.id, worker, local
        self.shutdown = shutdown
        self.heartbeat_seconds = heartbeat_seconds
        self.done: int | None = None
        self.total: int | None = None
        self.extra: dict[str, Any] = {}
        self.eta_s: float | None = None
        self._first: tuple[float, int] | None = None
        self._milestone = 0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"factory-heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> RunningJob:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.heartbeat_seconds, 30))

    # -- the Reporter side (called by the running evaluator or trainer) -------------------------

    def progress(self, done: int, total: int | None, **extra: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if self._first is None or done < self._first[1]:
                self._first = (now, done)
            since, base = self._first
            rate = (done - base) / (now - since) if now > since and done > base else None
            self.done, self.total, self.extra = done, total, {k: v for k, v in extra.items() if v is not None}
            self.eta_s = (total - done) / rate if rate and total is not None else None
        if total:
            tenth = 10 * done // total
            if tenth > self._milestone:
                self._milestone = tenth
                self.log(
                    f"progress {done}/{total}" + (f", about {self.eta_s:.0f} s left" if self.eta_s is not None else "")
                )
        if self.cancelled.is_set():
            raise JobStopped(f"job {self.job_id} was cancelled at {done}/{total}", reason="cancelled")
        if self.lost.is_set():
            raise JobStopped(
                f"job {self.job_id} was taken away from worker {self.worker} (it missed its heartbeats)", reason="lost"
            )
        if self.shutdown.is_set():
            raise JobStopped(f"worker {self.worker} is stopping", reason="shutdown")

    def link_run(self, kind: str, run_id: int) -> None:
        self.queue.link_run(self.job_id, self.worker, kind, run_id)

    def log(self, message: str, level: str = "info") -> None:
        self.local.emit(self.job_id, message, level)
        try:
            self.queue.log(self.job_id, message, level)
        except StoreError as exc:
            self.local.emit(self.job_id, f"could not write the job log ({exc})", "warning")

    # -- the heartbeat thread -------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            with self._lock:
                done, total, eta, extra = self.done, self.total, self.eta_s, dict(self.extra)
            try:
                if self.queue.heartbeat(self.job_id, self.worker, done=done, total=total, eta_s=eta, progress=extra):
                    self.cancelled.set()
            except JobLost:
                self.lost.set()
                return
            except StoreError as exc:  # a passing database hiccup: the next beat tries again
                self.local.emit(self.job_id, f"heartbeat failed ({exc})", "warning")


class _JobLogHandler(logging.Handler):
    """factory's own warnings, raised in the job's thread, go into the job's log too."""

    def __init__(self, job: RunningJob) -> None:
        super().__init__(logging.WARNING)
        self.job, self.thread = job, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.name.startswith("factory"):
            self.job.log(record.getMessage(), record.levelname.lower())


class Worker:
    """Claims jobs of ``kinds`` from the database of ``cfg.results_db`` and runs them one at a time."""

    def __init__(
        self,
        cfg: RunConfig,
        kinds: Sequence[str] = KINDS,
        *,
        queue: JobQueue | None = None,
        engine: Any = None,
        name: str | None = None,
        log_json: bool = False,
        quiet: bool = False,
    ) -> None:
        self.cfg, self.kinds, self.engine = cfg, list(kinds), engine
        self.queue = queue or JobQueue(cfg.results_db, timeout=cfg.results_db_timeout)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.local = JobLog(self.name, json_lines=log_json, quiet=quiet)
        self._last_sweep = self._last_forget = 0.0

    def run(
        self, stop: threading.Event | None = None, *, exit_idle: float | None = None, max_jobs: int | None = None
    ) -> int:
        """Work until ``stop`` is set, the queue stayed empty ``exit_idle`` seconds, or ``max_jobs`` ran; returns jobs run."""
        stop = stop or threading.Event()
        ran, pause, idle_since = 0, 0.05, time.monotonic()
        self.local.emit(None, f"taking {', '.join(self.kinds)} jobs from {self.queue.url}")
        while not stop.is_set() and (max_jobs is None or ran < max_jobs):
            try:
                self._housekeeping()
                job = self.queue.claim(self.name, self.kinds)
            except StoreError as exc:  # the database is away: wait and look again, never give up on the queue
                self.local.emit(None, f"cannot reach the queue ({exc}); trying again", "warning")
                job = None
            if job is not None:
                self.run_job(job, stop)
                ran, pause, idle_since = ran + 1, 0.05, time.monotonic()
                continue
            if exit_idle is not None and time.monotonic() - idle_since >= exit_idle:
                break
            stop.wait(pause)
            pause = min(pause * 2, self.cfg.jobs.poll_seconds)  # bounded backoff while the queue is empty
        return ran

    def _housekeeping(self) -> None:
        now = time.monotonic()
        jobs = self.cfg.jobs
        if now - self._last_sweep >= SWEEP_EVERY * jobs.stale_after_seconds:
            self._last_sweep = now
            for job in self.queue.requeue_stale(jobs.stale_after_seconds):
                self.local.emit(job.id, f"its worker stopped heartbeating; now {job.status}", "warning")
        if now - self._last_forget >= FORGET_EVERY:
            self._last_forget = now
            self.queue.forget_finished(jobs.keep_finished)

    def run_job(self, job: JobInfo, stop: threading.Event | None = None) -> None:
        """Run one claimed job to its end (succeeded, failed or cancelled); never raises for the job's own failure.

        Setting ``stop`` meanwhile hands the job back to the queue at its next batch.
        """
        self.local.emit(job.id, f"claimed ({job.kind}, priority {job.priority}, attempt {job.attempts})")
        with RunningJob(
            self.queue, job, self.name, self.cfg.jobs.heartbeat_seconds, self.local, stop or threading.Event()
        ) as running:
            token = current.set(running)
            handler = _JobLogHandler(running)
            logging.getLogger("factory").addHandler(handler)
            try:
                if job.kind in EVAL_KINDS:
                    self._evaluate(job, running)
                else:
                    self._finetune(job, running)
            except JobStopped as exc:
                self._stopped(job, running, exc)
            except JobLost as exc:
                self.local.emit(job.id, f"{exc}; its results are not written", "warning")
            except Exception as exc:  # a job's failure is its status, never the worker's end
                reason = str(exc) if isinstance(exc, FactoryError) else f"{exc.__class__.__name__}: {exc}"
                if not isinstance(exc, FactoryError):
                    log.exception("job %s failed", job.id)
                self._end(job, "failed", error=reason)
            finally:
                logging.getLogger("factory").removeHandler(handler)
                current.reset(token)

    def _stopped(self, job: JobInfo, running: RunningJob, exc: JobStopped) -> None:
        if exc.reason == "shutdown":
            try:
                self.queue.release(job.id, self.name, str(exc))
                self.local.emit(job.id, "handed back to the queue: this worker is stopping", "warning")
            except StoreError as error:  # its heartbeat stops: it is requeued once it goes stale
                self.local.emit(job.id, f"could not hand the job back ({error})", "warning")
            return
        if not exc.cancelled:
            self.local.emit(job.id, f"{exc}; its results are not written", "warning")
            return
        where = f" at {running.done}/{running.total}" if running.done is not None else ""
        self._end(job, "cancelled", message=f"cancelled{where} as requested; no results were written")

    def _end(self, job: JobInfo, status: str, **kwargs: Any) -> None:
        try:
            self.queue.finish(job.id, self.name, status, **kwargs)
            self.local.emit(
                job.id,
                kwargs.get("message") or status + (f": {kwargs['error']}" if kwargs.get("error") else ""),
                "error" if status == "failed" else "info",
            )
        except JobLost as exc:
            self.local.emit(job.id, str(exc), "warning")
        except StoreError as exc:
            self.local.emit(job.id, f"could not record that the job {status} ({exc})", "error")

    def _config(self, job: JobInfo) -> RunConfig:
        """The job's validated config, recording into this worker's database."""
        return load_config(job.config, results_db=self.queue.db.url, results_db_timeout=self.cfg.results_db_timeout)

    def _evaluate(self, job: JobInfo, running: RunningJob) -> None:
        from factory import __version__
        from factory.eval.run import evaluate, recorded_facts, save_beside_outputs
        from factory.store.evals import eval_run_row

        cfg = self._config(job)
        engine = self.engine
        served = engine is not None and (cfg.model, cfg.adapter) == (self.cfg.model, self.cfg.adapter)
        running.log(f"evaluating {cfg.task} on {cfg.model}" + (" with the served engine" if served else ""))
        started = time.perf_counter()
        result = evaluate(
            cfg,
            command=job.kind,
            engine=engine if served else None,
            loaded=getattr(engine, "loaded", None) if served else None,
            progress=running.progress,
            record=False,
        )
        facts = recorded_facts(cfg, job.kind, time.perf_counter() - started, __version__)
        summary = result.to_dict()

        def record(session: Any) -> tuple[str, int]:
            row = eval_run_row(result, **facts)
            session.add(row)
            session.flush()
            summary["run_id"] = result.run_id = row.id
            return "eval", row.id

        overall = ", ".join(f"{k} {v:.4g}" for k, v in result.overall.values.items())
        try:
            self.queue.finish(
                job.id,
                self.name,
                "succeeded",
                result=summary,
                record=record,
                message=f"succeeded: {overall} over {result.overall.n} items",
            )
            self.local.emit(job.id, f"succeeded ({overall}); recorded as eval run {result.run_id}")
        except StoreError as exc:
            if isinstance(exc, JobLost):
                raise
            saved = save_beside_outputs(result, cfg, {**facts, "job_id": job.id, "database_error": str(exc)})
            self.local.emit(job.id, f"{exc}; the result was written to {saved} instead", "error")

    def _finetune(self, job: JobInfo, running: RunningJob) -> None:
        from factory.api import finetune

        cfg = self._config(job)
        running.log(f"training {cfg.stage}/{cfg.method} on {cfg.model} into {cfg.output_dir}")
        metrics = finetune(cfg)
        kept = {
            key: value for key, value in metrics.items() if key != "log_history" and not isinstance(value, (dict, list))
        }
        loss = metrics.get("train_loss")
        self._end(
            job,
            "succeeded",
            result=kept,
            message="succeeded" + (f": train loss {loss:.4g}" if loss is not None else ""),
        )
