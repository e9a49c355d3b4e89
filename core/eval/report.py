"""Terminal tables for eval results, run history and run comparisons (rich)."""

from __future__ import annotations

from typing import Any

from factory.eval.results import EvalResult, Scores
from factory.eval.store import RunInfo


def _console() -> Any:
    from rich.console import Console

    return Console()


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.2f}" if metric == "accuracy" else f"{value:.2f}"


def print_result(result: EvalResult) -> None:
    """Per subject, per category and overall scores (accuracy in percent)."""
    from rich.table import Table

    metrics = list(result.overall.values)
    table = Table(title=f"{result.task}" + (f" (run {result.run_id})" if result.run_id else ""))
    for column in ("", "n", *metrics):
        table.add_column(column, justify="left" if not column else "right")

    def rows(group: dict[str, Scores], style: str = "") -> None:
        for name, scores in group.items():
            table.add_row(name, str(scores.n), *(_value(m, scores.values.get(m)) for m in metrics), style=style)

    rows(result.subjects)
    if result.categories:
        table.add_section()
        rows(result.categories, "cyan")
    table.add_section()
    rows({"overall": result.overall}, "bold")
    console = _console()
    console.print(table)
    if result.output_file:
        console.print(f"predictions: {result.output_file}")


def print_history(runs: list[RunInfo], location: str) -> None:
    from rich.table import Table

    console = _console()
    if not runs:
        console.print(f"no runs recorded yet in {location}")
        return
    console.print(f"runs in {location}", soft_wrap=True)
    table = Table()
    for column in ("id", "when", "task", "model", "adapter", "metric", "score", "n"):
        wide = column in ("model", "adapter")  # paths: fold them, keep the short columns on one line
        table.add_column(
            column, justify="right" if column in ("id", "score", "n") else "left", overflow="fold", no_wrap=not wide
        )
    for run in runs:
        table.add_row(
            str(run.id),
            run.created_at.astimezone().strftime("%m-%d %H:%M"),
            run.task,
            run.model,
            run.adapter or "-",
            run.metric,
            _value(run.metric, run.score),
            str(run.n),
        )
    console.print(table)


def print_compare(a: RunInfo, b: RunInfo, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    console = _console()
    for label, run in (("A", a), ("B", b)):
        console.print(f"{label}: run {run.id} {run.task} {run.model}" + (f" + {run.adapter}" if run.adapter else ""))
    if a.task != b.task:
        console.print(f"[yellow]note: the runs evaluate different tasks ({a.task}, {b.task})[/yellow]")
    table = Table()
    for column in ("scope", "name", "metric", f"A (run {a.id})", f"B (run {b.id})", "B - A"):
        table.add_column(column, justify="right" if column.startswith(("A", "B")) else "left")
    for row in rows:
        delta = row["delta"]
        shown = "-" if delta is None else _value(row["metric"], delta)
        style = "" if not delta else ("green" if delta > 0 else "red")
        if delta and delta > 0:
            shown = "+" + shown
        table.add_row(
            row["scope"],
            row["name"],
            row["metric"],
            _value(row["metric"], row["a"]),
            _value(row["metric"], row["b"]),
            f"[{style}]{shown}[/{style}]" if style else shown,
        )
    console.print(table)
