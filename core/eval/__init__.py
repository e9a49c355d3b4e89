"""Evaluation: evaluators (multiple choice, BLEU/ROUGE prediction) and the results store.

``factory.eval.evaluate(config, overrides, **kwargs)`` runs the config's ``task`` and records it;
see :mod:`factory.eval.run`. Imported lazily so loading an evaluator does not pull in the store.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from factory.eval.run import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
