"""Tokenization per data kind: standard records -> token ids with the trained tokens marked.

A conversation is rendered by the chat template into segments and the WHOLE rendered text is
tokenized once, so the ids are exactly the tokenizer's own encoding of the string the model sees
at inference (tokenizing segment by segment can merge differently at the seams). A token is
trainable when its character span overlaps a trainable segment.

Rows longer than ``cutoff_len`` are shortened without ever losing the whole response: first the
oldest turns of the context go (the system prompt stays), then the prompt loses its middle and
the response its end, each keeping at least half of the budget when it needs it. Rows that
cannot be used are kept as empty rows with a ``dropped:`` status, so the caller can count them.

The functions here work on one ``datasets.map`` batch (a dict of columns) and return plain
columns; they hold no state, so ``map`` can run them in worker processes and cache their output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory.data.record import RESPONSE_ROLES

IGNORE_INDEX = -100
OK = "ok"
TRUNCATED = "truncated"
DROPPED = "dropped:"  # prefix of the status of an unusable row; the rest is the reason

# datasets types of the column kinds a data kind declares (DataKind.columns)
COLUMN_TYPES = ("ids", "bool", "float")


def output_features(columns: dict[str, str]) -> Any:
    """The ``datasets.Features`` of a tokenized batch with ``columns`` (typed even when a batch is all dropped)."""
    from datasets import Features, List, Value

    types = {"ids": List(Value("int32")), "bool": Value("bool"), "float": Value("float32")}
    features: dict[str, Any] = {name: types[kind] for name, kind in columns.items()}
    features["_status"] = Value("string")
    features["_length"] = Value("int32")
    return Features(features)


@dataclass(frozen=True)
class TokenizeOptions:
    """The settings tokenization depends on (all of them: they are part of the cache fingerprint)."""

    kind: str  # the data kind's name
    cutoff_len: int
    train_on: str = "all"
    version: str = ""  # a hash of the tokenization code, so editing it invalidates cached results


@dataclass
class Split:
    """A tokenized conversation cut before its final response(s); masks say which tokens train."""

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    responses: list[tuple[np.ndarray, np.ndarray]]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(ids) for ids, _ in self.responses)


# -- encoding --------------------------------------------------------------------------------


def _trainable_tokens(segments: Sequence[Any], offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Per token: does its character span overlap a trainable segment? (vectorized, no token loop)"""
    chars = np.repeat(
        np.fromiter((s.trainable for s in segments), bool, len(segments)),
        np.fromiter((len(s.text) for s in segments), np.int64, len(segments)),
    )
    prefix = np.concatenate(([0], np.cumsum(chars)))
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start = np.minimum(spans[:, 0], len(chars))
    end = np.minimum(np.maximum(spans[:, 1], start + 1), len(chars))  # an empty span still sits somewhere
    return prefix[end] - prefix[start] > 0


def _encode(tokenizer: Any, renders: list[list[Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and trainable flags of rendered conversations, each tokenized as one string."""
    if not renders:
        return []
    if not getattr(tokenizer, "is_fast", True):
        return [_encode_by_segment(tokenizer, segments) for segments in renders]
    texts = ["".join(s.text for s in segments) for segments in renders]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        (np.asarray(ids, dtype=np.int64), _trainable_tokens(segments, offsets))
        for ids, offsets, segments in zip(enc["input_ids"], enc["offset_mapping"], renders)
    ]


def _encode_by_segment(tokenizer: Any, segments: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """For Python (slow) tokenizers, which give no offsets: each segment encoded on its own.

    The seams may tokenize differently from the whole string, which fast tokenizers avoid.
    """
    pieces = [tokenizer(s.text, add_special_tokens=False)["input_ids"] if s.text else [] for s in segments]
    ids = np.fromiter((t for piece in pieces for t in piece), np.int64)
    mask = np.repeat(np.fromiter((s.trainable for s in segments), bool, len(segments)), [len(p) for p in pieces])
    return ids, mask


def _final_response_start(mask: np.ndarray) -> int | None:
    """Index of the first token of the last trainable run (the final response), None if none trains."""
    trained = np.flatnonzero(mask)
    if not len(trained):
        return None
    before = np.flatnonzero(~mask[: trained[-1]])
    return int(before[-1]) + 1 if len(before) else 0


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _split(encoded: list[tuple[np.ndarray, np.ndarray]], train_prompt: bool) -> Split | None:
    """Split the encodings of one context + each final response at the response start.

    The prompt is the tokens the encodings share before their final responses, so a pair's two
    answers always follow the very same prompt ids.
    """
    starts = [_final_response_start(mask) for _, mask in encoded]
    if any(start is None for start in starts):
        return None
    cut = min(starts)
    first_ids, first_mask = encoded[0]
    for ids, _ in encoded[1:]:
        cut = min(cut, _common_prefix(first_ids, ids))
    prompt_mask = first_mask[:cut].copy() if train_prompt else np.zeros(cut, dtype=bool)
    responses = [(ids[cut:], mask[cut:]) for ids, mask in encoded]
    return Split(first_ids[:cut], prompt_mask, responses)


# -- fitting into cutoff_len -----------------------------------------------------------------


def budget(prompt_len: int, response_len: int, cutoff_len: int) -> tuple[int, int]:
    """Token budgets (prompt, response) of a row: a part that needs it keeps at least half the cutoff."""
    if prompt_len + response_len <= cutoff_len:
        return prompt_len, response_len
    half = cutoff_len // 2
    if response_len <= half:
        return cutoff_len - response_len, response_len
    if prompt_len <= half:
        return prompt_len, cutoff_len - prompt_len
    return half, cutoff_len - half


def _cut_middle(values: np.ndarray, keep: int) -> np.ndarray:
    """Keep the head (system prompt, first header) and the tail (the question just before the answer)."""
    if len(values) <= keep:
        return values
    head = keep // 4
    return np.concatenate((values[:head], values[len(values) - (keep - head) :]))


def _cut(split: Split, cutoff_len: int) -> Split:
    prompt_budget, response_budget = budget(
        len(split.prompt_ids), max(len(ids) for ids, _ in split.responses), cutoff_len
    )
    return Split(
        _cut_middle(split.prompt_ids, prompt_budget),
        _cut_middle(split.prompt_mask, prompt_budget),
        [(ids[:response_budget], mask[:response_budget]) for ids, mask in split.responses],
    )


def _turn_starts(messages: Sequence[dict]) -> list[int]:
    """Indices where a user turn begins; everything up to the next one belongs to that turn."""
    return [0] + [i for i, m in enumerate(messages) if m["role"] == "user" and i > 0]


# -- conversations -----------------------------------------------------------------------------


@dataclass
class Conversation:
    context: list[dict]  # the messages before the final response(s)
    responses: list[dict]  # one final response (supervised, kto) or two (pairwise)
    system: str
    tools: str

    def renders(self, template: Any, tokenizer: Any, context: list[dict] | None = None) -> list[list[Any]]:
        context = self.context if context is None else context
        return [
            template.render(context + [response], system=self.system, tools=self.tools, tokenizer=tokenizer)
            for response in self.responses
        ]


def final_answer(record: dict) -> Conversation | str:
    """A record whose last message is the answer to train on: its conversation, or why it cannot be used."""
    messages = list(record.get("messages") or [])
    if not messages or messages[-1]["role"] not in RESPONSE_ROLES:
        return "it does not end with an assistant turn"
    if not said(messages[-1]):
        return "its answer is empty"  # it would only teach the model to stop at once
    return Conversation(messages[:-1], messages[-1:], record.get("system") or "", record.get("tools") or "")


def said(message: Any) -> bool:
    """Whether a response message has any content (text or a tool call)."""
    content = message.get("content") if isinstance(message, dict) else message
    return bool(str(content or "").strip())


def _fit(
    conv: Conversation, split: Split, template: Any, tokenizer: Any, options: TokenizeOptions, train_prompt: bool
) -> Split:
    """Shorten an over-long conversation: drop the fewest oldest turns that make it fit, else cut tokens.

    Dropping more turns never makes a conversation longer, so a binary search needs only
    log2(turns) re-encodings.
    """
    turns = _turn_starts(conv.context)
    splits: dict[int, Split | None] = {0: split}

    def dropping(k: int) -> Split | None:
        if k not in splits:
            renders = conv.renders(template, tokenizer, conv.context[turns[k] :])
            splits[k] = _split(_encode(tokenizer, renders), train_prompt)
        return splits[k]

    lo, hi = 0, len(turns) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = dropping(mid)
        if candidate is not None and candidate.length <= options.cutoff_len:
            hi = mid
        else:
            lo = mid + 1
    return _cut(dropping(lo) or split, options.cutoff_len)


def _trains(split: Split) -> bool:
    """Does every response keep a trained token the model predicts (the row's first token never is)?"""
    skip = max(0, 1 - len(split.prompt_ids))
    return all(mask[skip:].any() for _, mask in split.responses)


def labels_of(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Token ids where they train, ``IGNORE_INDEX`` elsewhere, as int32."""
    return np.where(mask, ids, IGNORE_INDEX).astype(np.int32)


def _dropped(out: dict[str, list], columns: dict[str, str], reason: str, length: int = 0) -> None:
    for name, kind in columns.items():
        out[name].append(np.zeros(0, dtype=np.int32) if kind == "ids" else None)
    out["_status"].append(DROPPED + reason)
    out["_length"].append(length)


class ConversationKind:
    """Base of the data kinds made from conversations: the context, then one or more final answers.

    A subclass says which conversation a standard record holds (:meth:`conversation`) and which
    columns a tokenized one becomes (:meth:`emit`); rendering, tokenizing the whole string once,
    masking and fitting into ``cutoff_len`` are shared (:func:`tokenize_conversations`). Plugins
    subclass it (``factory.plugin_api.ConversationKind``) for kinds such as preference pairs.
    """

    columns: dict[str, str] = {}
    packable = False

    def conversation(self, record: dict) -> Conversation | str:
        """The conversation to tokenize, or the reason (a clause) the record cannot be used."""
        raise NotImplementedError

    def emit(self, record: dict, split: Split) -> dict[str, Any]:
        """The columns of one tokenized row from its prompt and answers (``Split``)."""
        raise NotImplementedError

    def trains_prompt(self, options: TokenizeOptions) -> bool:
        """Whether prompt tokens train too (supervised data with ``train_on: all``)."""
        return False

    def tokenize(
        self, batch: dict[str, list], *, tokenizer: Any, template: Any, options: TokenizeOptions
    ) -> dict[str, list]:
        return tokenize_conversations(batch, tokenizer=tokenizer, template=template, options=options, kind=self)


def tokenize_conversations(
    batch: dict[str, list],
    *,
    tokenizer: Any,
    template: Any,
    options: TokenizeOptions,
    kind: ConversationKind,
) -> dict[str, list]:
    """``datasets.map`` function (batched) for a conversation ``kind``."""
    train_prompt = kind.trains_prompt(options)
    records = [dict(zip(batch, row)) for row in zip(*batch.values())]
    convs = [kind.conversation(record) for record in records]
    renders = [conv.renders(template, tokenizer) for conv in convs if isinstance(conv, Conversation)]
    encoded = iter(_encode(tokenizer, [segments for group in renders for segments in group]))

    out: dict[str, list] = {name: [] for name in output_features(kind.columns)}
    for record, conv in zip(records, convs):
        if isinstance(conv, str):
            _dropped(out, kind.columns, conv)
            continue
        split = _split([next(encoded) for _ in conv.responses], train_prompt)
        if split is None or not _trains(split):
            _dropped(out, kind.columns, "its response renders to no trainable token (check the template)")
            continue
        length, status = split.length, OK
        if length > options.cutoff_len:
            status = TRUNCATED
            split = _fit(conv, split, template, tokenizer, options, train_prompt)
            if not _trains(split):
                _dropped(out, kind.columns, f"cutoff_len {options.cutoff_len} leaves no room for the response", length)
                continue
        for name, value in kind.emit(record, split).items():
            out[name].append(value)
        out["_status"].append(status)
        out["_length"].append(length)
    return out


def tokenize_texts(batch: dict[str, list], *, tokenizer: Any, options: TokenizeOptions) -> dict[str, list]:
    """``datasets.map`` function (batched) for pre-training: each text's ids, ending with the eos."""
    texts = batch["text"]
    usable = [i for i, text in enumerate(texts) if text and text.strip()]
    encoded = iter(tokenizer([texts[i] for i in usable])["input_ids"] if usable else [])
    eos = tokenizer.eos_token_id
    out: dict[str, list] = {"input_ids": [], "_status": [], "_length": []}
    keep = set(usable)
    for i, text in enumerate(texts):
        if i not in keep:
            out["input_ids"].append(np.zeros(0, dtype=np.int32))
            out["_status"].append(DROPPED + ("it has no text" if text is None else "its text is empty"))
            out["_length"].append(0)
            continue
        ids = list(next(encoded))
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        out["input_ids"].append(np.asarray(ids, dtype=np.int32))
        out["_status"].append(OK)
        out["_length"].append(len(ids))
    return out
