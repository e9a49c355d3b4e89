"""A progress bar on stderr (rich), a listener called after every batch, or a silent stand-in.

``progress`` as evaluators take it: ``True`` shows the bar, ``False`` nothing, and a callable
``progress(done, total)`` is told of every advance (a job's worker heartbeats from it, and it
raises to stop the evaluation at that batch when the job is cancelled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[int, int], None]
ProgressOption = bool | Listener


class Bar:
    """Advance by items done; ``describe`` names what is being worked on."""

    def __init__(
        self, progress: Any = None, task: Any = None, listener: Listener | None = None, total: int = 0
    ) -> None:
        self._progress, self._task = progress, task
        self._listener, self._total, self._done = listener, total, 0

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._progress is not None:
            self._progress.advance(self._task, n)
        if self._listener is not None:
            self._listener(self._done, self._total)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)


@contextmanager
def progress_bar(total: int, label: str, *, enabled: ProgressOption = True) -> Iterator[Bar]:
    if callable(enabled):
        enabled(0, total)
        yield Bar(listener=enabled, total=total)
        return
    if not enabled:
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield Bar(progress, progress.add_task(label, total=total))
