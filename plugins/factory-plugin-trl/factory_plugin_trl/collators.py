"""Batch adapters: factory's collated batches in the layouts the TRL trainers and PPO read.

The core's collators already build the rows (prompt + answer, answer labels aligned, prompt
never trained); these only rename or add what a trainer expects, so tokenization, templates and
masking stay factory's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from factory.plugin_api import IGNORE_INDEX, pad

Features = Sequence[dict[str, Any]]


def completion_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``labels`` -> ``completion_mask`` (1 where a token trains), the layout of TRL's DPO and KTO trainers."""
    labels = batch.pop("labels")
    batch["completion_mask"] = (labels != IGNORE_INDEX).long()
    return batch


@dataclass
class CompletionMaskCollator:
    """Pairwise rows for TRL's DPOTrainer: chosen rows first, then rejected, with a completion mask."""

    inner: Any

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        return completion_batch(self.inner(features))


@dataclass
class UnlabelledCollator:
    """Pairwise rows for TRL's RewardTrainer, which scores whole sequences and reads no labels."""

    inner: Any

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        batch.pop("labels")
        return batch


@dataclass
class KTOPairsCollator:
    """KTO rows plus the mismatched pairs its KL estimate needs: each prompt with its neighbour's answer.

    Built per batch (prompt ``i`` with the completion of row ``i - 1``), as in the KTO paper, so
    the pairs never depend on the order the sampler gives and shuffling stays on.
    """

    inner: Any

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        batch = completion_batch(self.inner(features))
        previous = [features[-1], *features[:-1]]
        shifted = [
            {**row, "completion_input_ids": other["completion_input_ids"], "completion_labels": other["completion_labels"]}
            for row, other in zip(features, previous)
        ]
        mismatched = completion_batch(self.inner(shifted))
        for key in ("input_ids", "attention_mask", "completion_mask"):
            batch[f"KL_{key}"] = mismatched[key]
        return batch


def prompt_of(input_ids: Sequence[int], labels: Sequence[int]) -> list[int]:
    """The tokens before the final response of a supervised row (its last run of trained labels)."""
    trained = np.asarray(labels) != IGNORE_INDEX
    starts = np.flatnonzero(trained & ~np.concatenate(([False], trained[:-1])))
    return list(input_ids[: int(starts[-1])]) if len(starts) else list(input_ids)


@dataclass
class PromptCollator:
    """Supervised rows -> their prompts, left-padded for generation (PPO samples the responses itself)."""

    pad_token_id: int

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        prompts = [prompt_of(f["input_ids"], f["labels"]) for f in features]
        length = max(map(len, prompts))
        # Left padding: pad, then each prompt reversed, reversed back as a whole.
        ids = pad([p[::-1] for p in prompts], self.pad_token_id, length)[:, ::-1].copy()
        mask = pad([[1] * len(p) for p in prompts], 0, length)[:, ::-1].copy()
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
