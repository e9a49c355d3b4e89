"""The data kinds of the preference stages: ``pairwise`` (chosen/rejected pairs) and ``kto`` (labelled answers).

Registered through the core's ``register_data_kinds`` hook. Rendering, tokenizing, masking and
fitting into ``cutoff_len`` are the core's (:class:`ConversationKind`); these say which
conversation a record holds, which columns a row becomes, and how rows are batched
(:mod:`factory_plugin_trl.collators`: pairs packed one per row).

Rows (token columns are int32 lists; answer labels align with answer ids, ``-100`` where no loss):
- ``pairwise``: ``prompt_input_ids``, ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
  ``rejected_labels``;
- ``kto``: ``prompt_input_ids``, ``completion_input_ids``, ``completion_labels``, ``label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.plugin_api import (
    IGNORE_INDEX,
    PROMPT_ROLES,
    Conversation,
    ConversationKind,
    Split,
    final_answer,
    labels_of,
    pad_token_id,
    said,
)


def _answers(split: Split, names: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt_input_ids": split.prompt_ids.astype("int32")}
    for name, (ids, mask) in zip(names, split.responses):
        row[f"{name}_input_ids"] = ids.astype("int32")
        row[f"{name}_labels"] = labels_of(ids, mask)
    return row


def _prompt_piece(row: dict) -> tuple[str, list[int], list[int]]:
    prompt = row["prompt_input_ids"]
    return "prompt", prompt, [IGNORE_INDEX] * len(prompt)


@dataclass(frozen=True)
class Pairwise(ConversationKind):
    """A prompt and two answers to it, the chosen one preferred."""

    columns = {
        "prompt_input_ids": "ids",
        "chosen_input_ids": "ids",
        "chosen_labels": "ids",
        "rejected_input_ids": "ids",
        "rejected_labels": "ids",
    }

    def conversation(self, record: dict) -> Conversation | str:
        messages = list(record.get("messages") or [])
        if record.get("chosen") is None or record.get("rejected") is None:
            return "it has no chosen/rejected pair"
        if not messages or messages[-1]["role"] not in PROMPT_ROLES:
            return "its prompt does not end with a user turn"
        if not said(record["chosen"]):
            return "its chosen answer is empty"
        return Conversation(
            messages, [record["chosen"], record["rejected"]], record.get("system") or "", record.get("tools") or ""
        )

    def emit(self, record: dict, split: Split) -> dict[str, Any]:
        return _answers(split, ("chosen", "rejected"))

    def collator(self, tokenizer: Any, *, packing: bool, flatten: bool, restarts: bool) -> Any:
        from factory_plugin_trl.collators import PairCollator

        return PairCollator(pad_token_id(tokenizer), packed=restarts, flatten=flatten and restarts)

    def detect(self, record: dict) -> int:
        return 2 if record.get("chosen") is not None else 0

    def pieces(self, row: dict) -> list:
        return [_prompt_piece(row)] + [
            (name, row[f"{name}_input_ids"], row[f"{name}_labels"]) for name in ("chosen", "rejected")
        ]


@dataclass(frozen=True)
class KTO(ConversationKind):
    """A conversation whose final answer is labelled desirable or undesirable."""

    columns = {"prompt_input_ids": "ids", "completion_input_ids": "ids", "completion_labels": "ids", "label": "bool"}

    def conversation(self, record: dict) -> Conversation | str:
        conversation = final_answer(record)
        if isinstance(conversation, Conversation) and record.get("label") is None:
            return "it has no KTO label"
        return conversation

    def emit(self, record: dict, split: Split) -> dict[str, Any]:
        return {**_answers(split, ("completion",)), "label": bool(record["label"])}

    def collator(self, tokenizer: Any, *, packing: bool, flatten: bool, restarts: bool) -> Any:
        from factory_plugin_trl.collators import KTOCollator

        return KTOCollator(pad_token_id(tokenizer), packed=restarts, flatten=flatten and restarts)

    def detect(self, record: dict) -> int:
        return 2 if record.get("label") is not None else 0

    def pieces(self, row: dict) -> list:
        verdict = "desirable" if row["label"] else "undesirable"
        return [_prompt_piece(row), (f"completion ({verdict})", row["completion_input_ids"], row["completion_labels"])]


PAIRWISE = Pairwise()
KTO_ROWS = KTO()
