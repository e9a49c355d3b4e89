"""Tokenization per data kind, truncation, statistics, caching and build_datasets.

The oracle for trained tokens is the tokenizer's own ``apply_chat_template``: a response spans
from the end of the conversation rendered up to it with a generation prompt to the end of the
conversation rendered through it (minus the untrained newline after ``<|im_end|>``).
"""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, IterableDataset, load_from_disk

from factory.config import load_config
from factory.data.collator import FlatteningCollator, PackedCollator, PaddingCollator
from factory.data.processing import packing_enabled, tokenize_dataset
from factory.data.record import RECORD_FEATURES, empty_record
from factory.data.template import get_template
from factory.data.tokenize import IGNORE_INDEX, _encode, budget
from factory.data.worker import build_datasets
from factory.errors import ConfigError, DataError

SYSTEM = "You answer briefly."
CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "Six, written 6."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def manager():
    from factory.plugins import PluginManager

    return PluginManager(entry_points=False, use_env=False)


@pytest.fixture(scope="module")
def template(smollm2_tokenizer, manager):
    return get_template("auto", smollm2_tokenizer, manager)


def _record(messages=(), system=SYSTEM, **fields) -> dict:
    return {**empty_record(), "messages": list(messages), "system": system, **fields}


def _records(rows: list[dict], tmp_path=None) -> Dataset:
    """Standard records; saved and reloaded from disk when ``tmp_path`` is given (so maps are cached)."""
    data = Dataset.from_list(rows, features=RECORD_FEATURES)
    if tmp_path is None:
        return data
    data.save_to_disk(str(tmp_path / "records"))
    return load_from_disk(str(tmp_path / "records"))


def _cfg(**kwargs):
    return load_config(**kwargs)


def _hf(messages, system=SYSTEM):
    return [{"role": "system", "content": system}] + list(messages)


def _spans(tokenizer, messages, system=SYSTEM) -> list[tuple[int, int]]:
    """Token spans of every assistant response (content + <|im_end|>), by the oracle above."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            tokenizer.apply_chat_template(_hf(messages[:i], system), add_generation_prompt=True, tokenize=True)[
                "input_ids"
            ]
        )
        end = len(tokenizer.apply_chat_template(_hf(messages[: i + 1], system), tokenize=True)["input_ids"]) - 1
        spans.append((start, end))
    return spans


def _expected_labels(ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


# -- supervised ---------------------------------------------------------------------------------


@pytest.mark.parametrize("train_on", ["all", "last"])
def test_supervised_labels_mask_exactly_the_prompt(smollm2_tokenizer, template, train_on) -> None:
    tok = smollm2_tokenizer
    out = tokenize_dataset(_records([_record(CONVERSATION)]), tok, template, _cfg(train_on=train_on), "supervised")
    row = out.dataset[0]
    expected_ids = tok.apply_chat_template(_hf(CONVERSATION), tokenize=True)["input_ids"]
    assert row["input_ids"] == expected_ids
    spans = _spans(tok, CONVERSATION)
    assert len(spans) == 2
    assert row["labels"] == _expected_labels(expected_ids, spans if train_on == "all" else spans[-1:])
    trained = tok.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert trained.endswith("Six, written 6.<|im_end|>")
    assert out.stats.kept == 1 and out.stats.truncated == 0 and not out.stats.dropped


def test_named_template_gives_the_same_rows_as_the_tokenizers_own(smollm2_tokenizer, template, manager) -> None:
    rows = [_record(CONVERSATION), _record(CONVERSATION[:2], system="")]
    auto = tokenize_dataset(_records(rows), smollm2_tokenizer, template, _cfg(), "supervised").dataset
    named = get_template("smollm", smollm2_tokenizer, manager)
    assert (
        tokenize_dataset(_records(rows), smollm2_tokenizer, named, _cfg(), "supervised").dataset.to_list()
        == auto.to_list()
    )


def test_truncation_keeps_part_of_the_response(smollm2_tokenizer, template) -> None:
    long_prompt = " ".join(f"word{i}" for i in range(300))
    long_answer = " ".join(f"answer{i}" for i in range(300))
    rows = [_record([{"role": "user", "content": long_prompt}, {"role": "assistant", "content": long_answer}])]
    out = tokenize_dataset(_records(rows), smollm2_tokenizer, template, _cfg(cutoff_len=128), "supervised")
    row = out.dataset[0]
    full = smollm2_tokenizer.apply_chat_template(_hf(rows[0]["messages"]), tokenize=True)["input_ids"]
    ((start, end),) = _spans(smollm2_tokenizer, rows[0]["messages"])
    assert len(row["input_ids"]) == 128
    trained = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert len(trained) == 64  # both parts are long: the response keeps half the budget...
    assert trained == full[start : start + 64]  # ...from its beginning
    assert row["input_ids"][:16] == full[:16]  # the prompt keeps its head (system prompt)...
    assert row["input_ids"][48:64] == full[start - 16 : start]  # ...and its end (the question, the header)
    assert out.stats.truncated == 1 and out.stats.over_cutoff == 1.0 and out.stats.length_max == len(full)


def test_truncation_drops_the_oldest_turns_first(smollm2_tokenizer, template) -> None:
    filler = " ".join(["history"] * 80)
    messages = [
        {"role": "user", "content": filler},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": filler},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": "Last question?"},
        {"role": "assistant", "content": "Last answer."},
    ]
    tok = smollm2_tokenizer
    last_turn = tok.apply_chat_template(_hf(messages[4:]), tokenize=True)["input_ids"]
    last_two = tok.apply_chat_template(_hf(messages[2:]), tokenize=True)["input_ids"]
    cutoff = len(last_two) - 1  # the last two turns do not fit, the last one does
    out = tokenize_dataset(_records([_record(messages)]), tok, template, _cfg(cutoff_len=cutoff), "supervised")
    assert out.dataset[0]["input_ids"] == last_turn
    assert out.stats.truncated == 1


def test_unusable_rows_are_counted_not_lost(smollm2_tokenizer, template) -> None:
    good = _record(CONVERSATION[:2])
    no_answer = _record(CONVERSATION[:1])
    text_only = {**empty_record(), "text": "plain text"}
    out = tokenize_dataset(
        _records([good, no_answer, good, text_only, no_answer]), smollm2_tokenizer, template, _cfg(), "supervised"
    )
    assert len(out.dataset) == 2
    assert out.stats.rows == 5 and out.stats.kept == 2
    assert out.stats.dropped == {"it does not end with an assistant turn": 3}
    with pytest.raises(DataError, match="none of the 2 rows can be used as supervised data"):
        tokenize_dataset(_records([no_answer, text_only]), smollm2_tokenizer, template, _cfg(), "supervised")
    with pytest.raises(DataError, match="1 because cutoff_len 1 leaves no room for the response"):
        tokenize_dataset(_records([good]), smollm2_tokenizer, template, _cfg(cutoff_len=1), "supervised")


def test_python_tokenizers_without_offsets_encode_segment_by_segment(smollm2_tokenizer, template) -> None:
    class PythonTokenizer:  # what a slow tokenizer looks like to tokenization: no offsets
        is_fast = False

        def __call__(self, text, **kwargs):
            assert "return_offsets_mapping" not in kwargs
            return smollm2_tokenizer(text, **kwargs)

    renders = [template.render(CONVERSATION, system=SYSTEM, tokenizer=smollm2_tokenizer)]
    ((fast_ids, fast_mask),) = _encode(smollm2_tokenizer, renders)
    ((slow_ids, slow_mask),) = _encode(PythonTokenizer(), renders)
    assert slow_ids.tolist() == fast_ids.tolist()  # ChatML seams are special tokens: no difference
    assert slow_mask.tolist() == fast_mask.tolist()


def test_budget_never_drops_the_response() -> None:
    for prompt in range(0, 60, 7):
        for response in range(1, 60, 5):
            p, r = budget(prompt, response, 32)
            assert p + r <= 32 or (p, r) == (prompt, response)
            assert r >= min(response, 16) and p >= min(prompt, 16)


# -- pairwise and KTO ---------------------------------------------------------------------------


def test_pairwise_rows(smollm2_tokenizer, template) -> None:
    tok = smollm2_tokenizer
    prompt = [{"role": "user", "content": "Name a colour."}]
    chosen = {"role": "assistant", "content": "Blue."}
    rejected = {"role": "assistant", "content": "I will not."}
    out = tokenize_dataset(
        _records([_record(prompt, chosen=chosen, rejected=rejected), _record(CONVERSATION)]),
        tok,
        template,
        _cfg(),
        "pairwise",
    )
    assert out.stats.dropped == {"it has no chosen/rejected pair": 1}
    row = out.dataset[0]
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        full = tok.apply_chat_template(_hf(prompt + [answer]), tokenize=True)["input_ids"]
        assert row["prompt_input_ids"] + row[f"{name}_input_ids"] == full
        ((start, end),) = _spans(tok, prompt + [answer])
        assert len(row["prompt_input_ids"]) == start
        assert row[f"{name}_labels"] == _expected_labels(full, [(start, end)])[start:]
    pairs = _cfg().manager().load("data_kinds", "pairwise")  # the trl plugin's data kind, through the registry
    batch = pairs.collator(tok, packing=False, flatten=False, restarts=False)([row])
    assert batch["input_ids"].shape[0] == 2


def test_kto_rows(smollm2_tokenizer, template) -> None:
    rows = [_record(CONVERSATION, label=False), _record(CONVERSATION)]
    out = tokenize_dataset(_records(rows), smollm2_tokenizer, template, _cfg(), "kto")
    assert out.stats.dropped == {"it has no KTO label": 1}
    row = out.dataset[0]
    full = smollm2_tokenizer.apply_chat_template(_hf(CONVERSATION), tokenize=True)["input_ids"]
    spans = _spans(smollm2_tokenizer, CONVERSATION)
    assert row["prompt_input_ids"] + row["completion_input_ids"] == full
    assert len(row["prompt_input_ids"]) == spans[-1][0]  # only the judged last answer is the completion
    assert row["label"] is False


def test_an_unknown_data_kind_is_one_sentence(smollm2_tokenizer, template) -> None:
    with pytest.raises(
        ConfigError,
        match=r"names data kind 'pairs', which no installed plugin registers \(available: .*pretrain.*supervised",
    ):
        tokenize_dataset(_records([_record(CONVERSATION)]), smollm2_tokenizer, template, _cfg(), "pairs")


def test_packing_only_for_pretrain_and_supervised() -> None:
    assert packing_enabled(_cfg(), "pretrain") and not packing_enabled(_cfg(), "supervised")
    assert packing_enabled(_cfg(packing=True), "supervised") and not packing_enabled(_cfg(packing=False), "pretrain")
    with pytest.raises(ConfigError, match="packing=true does not apply to pairwise"):
        packing_enabled(_cfg(packing=True), "pairwise")


# -- pre-training -------------------------------------------------------------------------------


def test_pretrain_rows_are_the_token_stream(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    texts = [f"Document {i}: " + "lorem ipsum " * (i * 7) for i in range(12)] + [""]
    rows = [{**empty_record(), "text": t} for t in texts]
    stream = [t for text in texts[:-1] for t in tok(text)["input_ids"] + [tok.eos_token_id]]
    out = tokenize_dataset(_records(rows), tok, None, _cfg(cutoff_len=64), "pretrain")
    assert out.stats.dropped == {"its text is empty": 1} and out.stats.packed
    chunks = out.dataset["input_ids"]
    assert [t for chunk in chunks for t in chunk] == stream
    assert all(len(c) == 64 for c in chunks[:-1]) and out.stats.sequences == len(chunks)
    unpacked = tokenize_dataset(_records(rows), tok, None, _cfg(cutoff_len=64, packing=False), "pretrain").dataset
    assert [t for chunk in unpacked["input_ids"] for t in chunk] == stream
    assert "position_ids" not in unpacked.column_names


def test_supervised_packing_keeps_every_trained_token(smollm2_tokenizer, template) -> None:
    rows = [
        _record([{"role": "user", "content": f"Q{i}" * i}, {"role": "assistant", "content": f"A{i} " * i}])
        for i in range(1, 30)
    ]
    plain = tokenize_dataset(_records(rows), smollm2_tokenizer, template, _cfg(cutoff_len=256), "supervised")
    packed = tokenize_dataset(
        _records(rows), smollm2_tokenizer, template, _cfg(cutoff_len=256, packing=True), "supervised"
    )
    assert packed.stats.sequences < plain.stats.sequences == len(rows)
    assert all(len(r) <= 256 for r in packed.dataset["input_ids"])
    trained = lambda data: sorted(t for labels in data["labels"] for t in labels if t != IGNORE_INDEX)  # noqa: E731
    assert trained(packed.dataset) == trained(plain.dataset)
    batch = PackedCollator(pad_token_id=0)(packed.dataset.select(range(2)).to_list())
    assert set(batch) == {"input_ids", "labels", "position_ids"}


# -- caching, workers, streaming ----------------------------------------------------------------


def test_second_identical_run_does_no_tokenization_work(smollm2_tokenizer, template, tmp_path, monkeypatch) -> None:
    rows = [_record(CONVERSATION)] * 20 + [_record(CONVERSATION[:1])]
    records = _records(rows, tmp_path)
    first = tokenize_dataset(records, smollm2_tokenizer, template, _cfg(cutoff_len=512), "supervised")

    calls = []
    cls = type(smollm2_tokenizer)
    original = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    again = tokenize_dataset(
        load_from_disk(str(tmp_path / "records")), smollm2_tokenizer, template, _cfg(cutoff_len=512), "supervised"
    )
    assert calls == []  # everything came from the cache
    assert again.dataset.to_list() == first.dataset.to_list()
    assert again.stats == first.stats  # statistics are read back from the cached columns
    assert again.dataset.cache_files == first.dataset.cache_files

    tokenize_dataset(records, smollm2_tokenizer, template, _cfg(cutoff_len=256), "supervised")
    assert calls  # a different setting is new work: the spy does see tokenization


def test_worker_processes_give_the_same_rows(smollm2_tokenizer, template, tmp_path) -> None:
    rows = [_record(CONVERSATION[: 2 * (i % 2 + 1)]) for i in range(10)]
    single = tokenize_dataset(_records(rows, tmp_path), smollm2_tokenizer, template, _cfg(), "supervised")
    workers = tokenize_dataset(
        _records(rows, tmp_path / "w"), smollm2_tokenizer, template, _cfg(preprocessing_num_workers=2), "supervised"
    )
    assert workers.dataset.to_list() == single.dataset.to_list()


def test_streaming_gives_the_same_rows(smollm2_tokenizer, template) -> None:
    rows = [_record(CONVERSATION), _record(CONVERSATION[:1]), _record(CONVERSATION[:2])]
    eager = tokenize_dataset(_records(rows), smollm2_tokenizer, template, _cfg(), "supervised")
    stream = tokenize_dataset(_records(rows).to_iterable_dataset(), smollm2_tokenizer, template, _cfg(), "supervised")
    assert isinstance(stream.dataset, IterableDataset) and stream.stats is None
    assert list(stream.dataset) == eager.dataset.to_list()


# -- build_datasets -----------------------------------------------------------------------------


def test_build_datasets_end_to_end(smollm2_tokenizer, template, manager, demo_dir) -> None:
    options = dict(dataset="alpaca_en_demo", dataset_dir=str(demo_dir), val_size=0.1, max_samples=200, cutoff_len=256)
    assert isinstance(
        build_datasets(_cfg(**options), manager, smollm2_tokenizer, template, "supervised")[2], FlatteningCollator
    )
    cfg = _cfg(**options, padding_free=False)
    train, evaluation, collator, stats = build_datasets(cfg, manager, smollm2_tokenizer, template, "supervised")
    assert len(train) == 180 and len(evaluation) == 20
    assert stats["train"]["rows"] == 180 and stats["eval"]["rows"] == 20
    assert 0 < stats["train"]["truncated"] < 180 and stats["train"]["length_max"] > 256
    assert isinstance(collator, PaddingCollator)
    batch = collator(train.select(range(4)).to_list())
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert not np.isin(batch["labels"].numpy(), [smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")]).any()
