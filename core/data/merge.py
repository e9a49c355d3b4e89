"""Merging several aligned data sets into one: concatenate, or interleave with probabilities.

``datasets`` does the work (``concatenate_datasets``, ``interleave_datasets``) for map-style
and streamed data alike; this module maps factory's ``mix_strategy`` onto it and checks the
probabilities so a wrong list fails with one sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from factory.errors import ConfigError

# mix_strategy -> datasets' stopping strategy
STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}
SHUFFLE_BUFFER = 10_000  # rows a streamed shuffle holds in memory


def merge(
    parts: Sequence[Any],
    *,
    strategy: str = "concat",
    probabilities: Sequence[float] | None = None,
    seed: int = 42,
    shuffle: bool = True,
) -> Any:
    """One data set from ``parts`` (all Dataset or all IterableDataset, in standard records).

    ``concat`` appends them and, when there are several, shuffles the result so batches mix
    them (a single data set keeps its order; the trainer's sampler shuffles it). The
    interleave strategies draw rows from each part with ``probabilities`` (round robin when
    None) until the first part runs out (``interleave_under``) or all have been seen at least
    once, repeating the shorter ones (``interleave_over``).
    """
    import datasets

    if not parts:
        raise ConfigError("no data set to merge; give at least one in dataset")
    if strategy == "concat":
        if probabilities:
            raise ConfigError(
                "interleave_probs is set but mix_strategy is concat; use mix_strategy interleave_under or interleave_over, "
                "or remove interleave_probs"
            )
        if len(parts) == 1:
            return parts[0]
        merged = datasets.concatenate_datasets(list(parts))
        if not shuffle:
            return merged
        if isinstance(merged, datasets.IterableDataset):
            return merged.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
        return merged.shuffle(seed=seed)
    if strategy not in STOPPING:
        raise ConfigError(f"mix_strategy '{strategy}' is not one of concat, {', '.join(STOPPING)}")
    if probabilities is not None:
        probabilities = _check_probabilities(probabilities, len(parts))
    return datasets.interleave_datasets(
        list(parts), probabilities=probabilities, seed=seed, stopping_strategy=STOPPING[strategy]
    )


def _check_probabilities(probabilities: Sequence[float], count: int) -> list[float]:
    values = [float(p) for p in probabilities]
    if len(values) != count:
        raise ConfigError(
            f"interleave_probs has {len(values)} values for {count} data sets; give one probability per data set"
        )
    if any(p < 0 for p in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ConfigError(f"interleave_probs {values} must be non-negative and sum to 1; e.g. [0.7, 0.3]")
    return values
