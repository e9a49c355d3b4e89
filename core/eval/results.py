"""What an evaluator returns: scores overall, per subject and per category, plus per-item records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Scores:
    """Metric values (accuracy, bleu-4, rouge-l...) over ``n`` scored items."""

    values: dict[str, float]
    n: int


@dataclass
class EvalResult:
    """One evaluation run's outcome; the results store keeps everything but ``items``.

    ``subjects`` are the benchmark's subjects (or, for predict, the data sets); ``categories``
    group subjects where the task defines groups. ``items`` holds one dict per scored item
    (question and prediction) for saving, ``settings`` what the run was asked to do.
    """

    task: str
    metric: str  # the headline metric, shown in history
    overall: Scores
    subjects: dict[str, Scores] = field(default_factory=dict)
    categories: dict[str, Scores] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    output_file: str | None = None
    run_id: int | None = None  # set once the results store has recorded the run

    def to_dict(self, *, items: bool = False) -> dict[str, Any]:
        """JSON-ready form (without the per-item records unless asked)."""
        data = asdict(self)
        if not items:
            data.pop("items")
        return data


def accuracy(correct: list[bool]) -> Scores:
    return Scores({"accuracy": sum(correct) / len(correct) if correct else 0.0}, len(correct))


def mean_scores(rows: list[dict[str, float]]) -> Scores:
    """The per-metric mean of per-item scores."""
    keys = list(rows[0]) if rows else []
    return Scores({key: sum(row[key] for row in rows) / len(rows) for key in keys}, len(rows))
