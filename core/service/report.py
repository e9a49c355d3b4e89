"""Terminal tables for jobs, job logs and training runs (rich)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from factory.store.training import TrainingRunInfo


def _console() -> Any:
    from rich.console import Console

    return Console()


def when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def progress_text(job: Mapping[str, Any]) -> str:
    progress = job.get("progress") or {}
    done, total = progress.get("done"), progress.get("total")
    if done is None:
        return "-"
    text = f"{done}/{total}" if total else str(done)
    if progress.get("eta_s") is not None and job.get("status") == "running":
        text += f" (~{progress['eta_s']:.0f} s left)"
    return text


def print_jobs(jobs: Sequence[Mapping[str, Any]], where: str) -> None:
    from rich.table import Table

    console = _console()
    if not jobs:
        console.print(f"no jobs in {where}")
        return
    table = Table(title=f"jobs in {where}")
    for column in ("id", "kind", "status", "priority", "model", "task", "submitted", "progress", "worker", "run"):
        table.add_column(
            column,
            overflow="fold",
            no_wrap=column not in ("model", "worker"),
            justify="right" if column in ("id", "priority") else "left",
        )
    for job in jobs:
        table.add_row(
            str(job["id"]),
            job["kind"],
            job["status"],
            str(job["priority"]),
            job["model"],
            job.get("task") or "-",
            when(job.get("created")),
            progress_text(job),
            job.get("worker") or "-",
            job.get("run") or "-",
        )
    console.print(table)


def print_job(job: Mapping[str, Any]) -> None:
    console = _console()
    console.print(f"[bold]job {job['id']}[/bold]  {job['kind']}  {job['status']}  priority {job['priority']}")
    for label, value in (
        ("model", job["model"]),
        ("adapter", job.get("adapter")),
        ("task", job.get("task")),
        ("submitted", when(job.get("created"))),
        ("started", when(job.get("started"))),
        ("finished", when(job.get("finished"))),
        ("worker", job.get("worker")),
        ("attempts", job.get("attempts")),
        ("progress", progress_text(job)),
        ("run", job.get("run")),
        ("error", job.get("error")),
    ):
        if value not in (None, "-", ""):
            console.print(f"{label}: {value}", soft_wrap=True)
    result = job.get("result") or {}
    overall = (result.get("overall") or {}).get("values")
    if overall:
        console.print("result: " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items()))
    elif result:
        console.print("result: " + json.dumps(result, default=str))


def log_line(line: Mapping[str, Any], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(line, ensure_ascii=False)
    return f"{when(line['time'])} job {line['job_id']} {line['level']}: {line['message']}"


def print_training_runs(runs: Sequence[Mapping[str, Any]], where: str) -> None:
    """Training and eval runs, newest first."""
    from rich.table import Table

    console = _console()
    if not runs:
        console.print(f"no runs recorded yet in {where}")
        return
    table = Table(title=f"runs in {where}")
    for column in ("run", "when", "status", "what", "model", "outcome", "seconds"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("what", "model", "outcome"))
    for run in runs:
        if run["kind"] == "train":
            what = f"{run['stage']}/{run['method']} on {', '.join(run['datasets'])}"
            loss = (run.get("metrics") or {}).get("last_loss")
            outcome = f"loss {loss:.4f}" if loss is not None else (run.get("error") or "-")
            table.add_row(
                run["run"],
                when(run["started_at"]),
                run["status"],
                what,
                run["model"],
                outcome,
                f"{run['duration_s']:.0f}" if run.get("duration_s") else "-",
            )
        else:
            outcome = f"{run['metric']} {run['score']:.4g} (n={run['n']})"
            table.add_row(
                run["run"],
                run["created_at"][:19].replace("T", " "),
                "succeeded",
                f"{run['command']} {run['task']}",
                run.get("adapter") or run["model"],
                outcome,
                f"{run['duration_s']:.0f}",
            )
    console.print(table)


def print_training_run(run: TrainingRunInfo, evaluations: Sequence[Any]) -> None:
    console = _console()
    console.print(f"[bold]train-{run.id}[/bold]  {run.stage}/{run.method}  {run.status}")
    for label, value in (
        ("model", run.model),
        ("continued adapter", run.adapter),
        ("data", ", ".join(run.datasets)),
        ("data sizes", json.dumps(run.data) if run.data else None),
        ("output", run.output_dir),
        ("started", when(run.started_at)),
        ("duration", f"{run.duration_s:.1f} s" if run.duration_s else None),
        ("job", run.job_id),
        ("host", run.host),
        ("error", run.error),
        ("plugins", ", ".join(f"{p['distribution']} {p['version']}" for p in run.plugins.values()) or None),
    ):
        if value not in (None, ""):
            console.print(f"{label}: {value}", soft_wrap=True)
    for key, value in run.eval_scores.items():
        console.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    curve = [point for point in run.loss_curve or [] if "loss" in point]
    if curve:
        console.print(
            f"loss curve ({len(curve)} points): " + "  ".join(f"{p['step']}:{p['loss']:.4f}" for p in _thin(curve, 12))
        )
    for evaluation in evaluations:
        console.print(f"evaluated: eval-{evaluation.id} {evaluation.task} {evaluation.metric} {evaluation.score:.4g}")


def _thin(points: list[Any], keep: int) -> list[Any]:
    """At most ``keep`` points, evenly spread, the last one always in."""
    if len(points) <= keep:
        return points
    step = (len(points) - 1) / (keep - 1)
    return [points[round(i * step)] for i in range(keep)]


def print_training_compare(a: TrainingRunInfo, b: TrainingRunInfo, rows: Mapping[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"train-{a.id} (A) vs train-{b.id} (B)")
    for column in ("", "A", "B", "B - A"):
        table.add_column(column, overflow="fold")
    for row in rows["settings"]:
        table.add_row(row["key"], str(row["a"]), str(row["b"]), "")
    table.add_section()
    for row in rows["outcomes"]:

        def shown(value: Any) -> str:
            return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)

        table.add_row(row["key"], shown(row["a"]), shown(row["b"]), shown(row["delta"]), style="bold")
    console.print(table)
