"""The data worker's fifth step, split: hold out the evaluation rows (``val_size``)."""

from __future__ import annotations

import math

from datasets import Dataset, IterableDataset

from factory.errors import ConfigError, DataError

AnyDataset = Dataset | IterableDataset


def split(data: AnyDataset, val_size: float, seed: int) -> tuple[AnyDataset, AnyDataset]:
    """Split ``val_size`` rows (a fraction below 1, or a count) off ``data`` for evaluation."""
    if val_size >= 1 and val_size != int(val_size):
        raise ConfigError(
            f"val_size {val_size:g} is neither a fraction below 1 nor a whole number of rows; give e.g. 0.1 or 100"
        )
    if isinstance(data, IterableDataset):
        if val_size < 1:
            raise ConfigError(
                f"val_size {val_size:g} is a fraction, but streamed data has no known length; give a number of rows (e.g. val_size: 100)"
            )
        count = int(val_size)
        return data.skip(count), data.take(count)
    total = len(data)
    count = math.ceil(val_size * total) if val_size < 1 else int(val_size)
    if count >= total:
        raise DataError(
            f"val_size {val_size:g} takes {count} of the {total} rows and leaves none to train on; lower val_size"
        )
    parts = data.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
