"""The core's data kinds, ``pretrain`` and ``supervised``, and looking a kind up by name.

A data kind is what a stage trains on (its ``data_kind``): the columns of a tokenized row, the
tokenize function that makes them from standard records, the collator that makes batches of
them, and whether rows may be packed. Kinds are registered like every other plugin kind
(``register_data_kinds``); the core's two go through the same hook (``factory.builtin.data``)
and plugins add theirs (preference pairs and KTO rows come from factory-plugin-trl).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from factory.data.collator import FlatteningCollator, PackedCollator, PaddingCollator, pad_token_id
from factory.data.tokenize import (
    Conversation,
    ConversationKind,
    Split,
    TokenizeOptions,
    final_answer,
    labels_of,
    tokenize_texts,
)
from factory.errors import ConfigError, one_of


def sequence_collator(tokenizer: Any, *, packing: bool, flatten: bool) -> Any:
    """Batches of one-example (or packed) rows with ``input_ids`` and ``labels``: padded, packed, or one flat row."""
    pad_id = pad_token_id(tokenizer)
    if flatten:
        return FlatteningCollator(pad_id)
    return (PackedCollator if packing else PaddingCollator)(pad_id)


@dataclass(frozen=True)
class Pretrain:
    """Plain text, split into ``cutoff_len`` chunks (concatenated first when packing, the default for pt)."""

    columns = {"input_ids": "ids"}
    packable = True
    chunks = True

    def tokenize(
        self, batch: dict[str, list], *, tokenizer: Any, template: Any, options: TokenizeOptions
    ) -> dict[str, list]:
        return tokenize_texts(batch, tokenizer=tokenizer, options=options)

    def collator(self, tokenizer: Any, *, packing: bool, flatten: bool, restarts: bool) -> Any:
        return sequence_collator(tokenizer, packing=packing, flatten=flatten)

    def detect(self, record: dict) -> int:
        return 2 if record.get("text") is not None else 0

    def pieces(self, row: dict) -> list:
        return [("", row["input_ids"], row["labels"])]


@dataclass(frozen=True)
class Supervised(ConversationKind):
    """Conversations trained on their final answer (and earlier answers, or everything, per ``train_on``)."""

    columns = {"input_ids": "ids", "labels": "ids"}
    packable = True

    def conversation(self, record: dict) -> Conversation | str:
        return final_answer(record)

    def emit(self, record: dict, split: Split) -> dict[str, Any]:
        ids, mask = split.responses[0]
        return {
            "input_ids": np.concatenate((split.prompt_ids.astype(np.int32), ids.astype(np.int32))),
            "labels": np.concatenate((labels_of(split.prompt_ids, split.prompt_mask), labels_of(ids, mask))),
        }

    def trains_prompt(self, options: TokenizeOptions) -> bool:
        return options.train_on == "all"

    def collator(self, tokenizer: Any, *, packing: bool, flatten: bool, restarts: bool) -> Any:
        return sequence_collator(tokenizer, packing=packing, flatten=flatten)

    def detect(self, record: dict) -> int:
        return 1 if isinstance(final_answer(record), Conversation) else 0

    def pieces(self, row: dict) -> list:
        return [("", row["input_ids"], row["labels"])]


PRETRAIN = Pretrain()
SUPERVISED = Supervised()


def data_kind(manager: Any, name: str, stage: str | None = None) -> Any:
    """The registered data kind ``name``; an unknown one is one sentence naming the kinds there are."""
    available = manager.names("data_kinds")
    if name not in available:
        owner = f"stage '{stage}' names" if stage else "the stage names"
        raise ConfigError(
            f"{owner} data kind '{name}', which no installed plugin registers (available: {one_of(available)}); "
            "install the plugin that provides it or fix the stage's data_kind"
        )
    return manager.load("data_kinds", name)
