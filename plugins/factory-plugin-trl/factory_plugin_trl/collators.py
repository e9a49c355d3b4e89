"""Batches of the preference stages: pairs and KTO rows as packed sequences, and PPO's prompts.

Rows come tokenized from the data worker (templates, truncation and masks are factory's); these
lay them out for one forward pass per batch with the core's :func:`sequence_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from factory.plugin_api import IGNORE_INDEX, pad, sequence_batch

Features = Sequence[dict[str, Any]]


REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps", "ref_KL_logps")


def _answer(f: dict[str, Any], name: str) -> tuple[list[int], list[int]]:
    """``prompt + answer`` ids and labels (the prompt never trains) of one answer column of a row."""
    prompt = list(f["prompt_input_ids"])
    return prompt + list(f[f"{name}_input_ids"]), [IGNORE_INDEX] * len(prompt) + list(f[f"{name}_labels"])


def _references(features: Features, batch: dict[str, Any]) -> dict[str, Any]:
    """The precomputed reference log-probabilities the rows carry, as tensors."""
    for key in REFERENCE_COLUMNS:
        if key in features[0]:
            batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
    return batch


@dataclass
class PairCollator:
    """Preference pairs: sequence ``i`` is pair ``i``'s chosen answer, ``B + i`` its rejected one.

    ``packed``: each pair is one row (prompt + chosen, then prompt + rejected, positions
    restarting), so no pair is padded to the longest answer in the batch; ``flatten`` makes the
    whole batch one row for varlen attention. Otherwise (models that cannot take restarting
    positions) every answer is its own padded row. ``share_prompt`` (with ``flatten``, for a model
    whose attention :func:`~factory.plugin_api.shares_prefixes`) computes each prompt once: the
    rejected answer follows the chosen one and attends to the prompt but not to it.
    """

    pad_token_id: int
    packed: bool = True
    flatten: bool = False
    pad_to_multiple_of: int | None = None
    share_prompt: bool = False

    def __call__(self, features: Features) -> dict[str, Any]:
        size = len(features)
        rows = [[(i, *_answer(f, "chosen")), (size + i, *self._rejected(f))] for i, f in enumerate(features)]
        batch = sequence_batch(
            rows,
            self.pad_token_id,
            packed=self.packed,
            flatten=self.flatten,
            pad_to_multiple_of=self.pad_to_multiple_of,
            share_prefixes=self.share_prompt,
        )
        return _references(features, batch)

    @staticmethod
    def _rejected(f: dict[str, Any]) -> tuple[list[int], list[int], int]:
        """The rejected answer continuing its prompt (shared with the chosen answer), or, empty, with the prompt copied."""
        if not len(
            f["rejected_input_ids"]
        ):  # nothing of its own: its last token, which a reward reads, is the prompt's
            return (*_answer(f, "rejected"), 0)
        return list(f["rejected_input_ids"]), list(f["rejected_labels"]), len(f["prompt_input_ids"])


@dataclass
class KTOCollator:
    """KTO rows, all in one packed row (sequence ``i`` = row ``i``), plus their mismatched pairs under ``KL_``.

    The mismatched pairs (each prompt with another row's answer, columns ``KL_completion_*``) are
    fixed in the data set (see :func:`factory_plugin_trl.reference.with_kl_pairs`), so their
    reference log-probabilities can be computed once. ``continue_kl`` (with ``flatten``, for a model
    whose attention :func:`~factory.plugin_api.shares_prefixes`) lays them out as continuations of
    the prompts in the row of the rows themselves (see :meth:`_continuations`): the pass over them
    then computes only the mismatched answers.
    """

    pad_token_id: int
    packed: bool = True
    flatten: bool = False
    pad_to_multiple_of: int | None = None
    continue_kl: bool = False

    def _batch(self, features: Features, name: str) -> dict[str, Any]:
        examples = [(i, *_answer(f, name)) for i, f in enumerate(features)]
        rows = [examples] if self.packed else [[example] for example in examples]
        return sequence_batch(
            rows,
            self.pad_token_id,
            packed=self.packed,
            flatten=self.flatten,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def __call__(self, features: Features) -> dict[str, Any]:
        batch = self._batch(features, "completion")
        if "KL_completion_input_ids" in features[0]:
            kl = self._continuations(features) if self.continue_kl and self.flatten else None
            kl = kl or self._batch(features, "KL_completion")
            batch.update({f"KL_{key}": value for key, value in kl.items()})
        batch["label"] = torch.tensor([bool(f["label"]) for f in features])
        return _references(features, batch)

    @staticmethod
    def _continuations(features: Features) -> dict[str, Any] | None:
        """The mismatched answers alone, one row, each continuing its prompt in the flattened row of :meth:`_batch`.

        For :func:`~factory_plugin_trl.sequences.sequence_logps` with the :class:`~factory.plugin_api.KeyCache`
        of the pass over that row: ``prefix_spans`` are the prompts' ranges there (positions continue
        from each prompt's end), and the first token of each answer is predicted by its prompt's last
        position, ``prompt_last`` in that row, whose hidden state is appended after this row's
        (``target_index`` counts it from there). None when no row has a mismatched answer.
        """
        ids, positions, owners, spans, edges, prompt_last = [], [], [], [], [0], []
        index, targets, target_owner = [], [], []
        start = 0  # where row i begins in the flattened row of the rows themselves
        for i, f in enumerate(features):
            prompt, answer, marks = len(f["prompt_input_ids"]), f["KL_completion_input_ids"], f["KL_completion_labels"]
            offset = edges[-1]
            if len(answer):
                spans.append((start, start + prompt))
                edges.append(offset + len(answer))
                ids.extend(answer)
                positions.extend(range(prompt, prompt + len(answer)))
                owners.extend([i] * len(answer))
                for j, mark in enumerate(marks):
                    if mark == IGNORE_INDEX or (j == 0 and prompt == 0):
                        continue
                    if j == 0:  # predicted by the prompt's last position, appended after this row
                        index.append(-1 - len(prompt_last))
                        prompt_last.append(start + prompt - 1)
                    else:
                        index.append(offset + j - 1)
                    targets.append(mark)
                    target_owner.append(i)
            start += prompt + len(f["completion_input_ids"])
        if not ids:
            return None
        length = len(ids)
        index = [length - 1 - k if k < 0 else k for k in index]  # -1 - n -> length + n
        bounds = torch.tensor(edges, dtype=torch.int32)
        longest = int(np.diff(edges).max())
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([positions]),
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": longest,
            "max_length_k": longest,
            "sequence_ids": torch.tensor([owners]),
            "sequence_count": len(features),
            "target_index": torch.tensor(index, dtype=torch.long),
            "target_ids": torch.tensor(targets, dtype=torch.long),
            "target_sequence": torch.tensor(target_owner, dtype=torch.long),
            "prefix_spans": tuple(spans),
            "prompt_last": torch.tensor(prompt_last, dtype=torch.long),
        }


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
