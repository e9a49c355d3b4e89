"""The data worker's first steps: resolve, load, align, merge, split (factory.data.worker & co).

Aligned records are checked against independent reads of the raw files with ``json.load``;
bad-input fixtures are written to ``tmp_path`` (the shared data is read-only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest

from factory.config import load_config
from factory.data import resolve as registry
from factory.data.align import detect_format
from factory.data.merge import merge
from factory.data.record import RECORD_FEATURES, empty_record
from factory.data.worker import load_data, load_records
from factory.errors import ConfigError, DataError
from factory.hookspecs import hookimpl

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "function_call", "observation": "observation"}
DEMO_ROWS = {  # /work/shared/data/README.md
    "alpaca_en_demo": 999,
    "alpaca_zh_demo": 1000,
    "identity": 91,
    "dpo_en_demo": 300,
    "kto_en_demo": 300,
    "glaive_toolcall_en_demo": 300,
    "c4_demo": 300,
    "wiki_demo": 30,
}


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory):
    """Keep the Arrow cache of these tests out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets-cache")))
        yield


@pytest.fixture
def manager(plugin_manager):
    return plugin_manager


def cfg_for(demo_dir=None, **kwargs):
    if demo_dir is not None:
        kwargs.setdefault("dataset_dir", str(demo_dir))
    return load_config(**kwargs)


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def error_of(call) -> str:
    """The message of the DataError/ConfigError ``call`` raises, checked to be one line."""
    with pytest.raises((DataError, ConfigError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# -- oracles: independent readings of the raw demo files --------------------------------------


def alpaca_messages(row, fill=lambda s: s):
    user = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": fill(user)}, {"role": "assistant", "content": fill(row["output"])}]


def sharegpt_messages(turns):
    """The turns after a leading system turn, in standard roles."""
    if turns and turns[0]["from"] == "system":
        turns = turns[1:]
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]


def sharegpt_system(turns):
    return turns[0]["value"] if turns and turns[0]["from"] == "system" else ""


# -- the nine demo data sets ------------------------------------------------------------------


def test_dataset_info_json_is_read_unchanged(demo_dir):
    raw = json.loads((demo_dir / "dataset_info.json").read_text())
    specs = registry.read_specs(demo_dir)
    assert len(raw) == 104 and set(specs) == set(raw)
    for name, entry in raw.items():
        spec = specs[name]
        if "file_name" in entry:
            assert spec.file == str(demo_dir / entry["file_name"])
        elif "hf_hub_url" in entry:
            assert spec.hub == entry["hf_hub_url"] and spec.split == entry.get("split", "train")
            assert spec.subset == entry.get("subset") and spec.folder == entry.get("folder")
        else:
            assert spec.unsupported_source and "ModelScope" in spec.unsupported_source
        assert spec.ranking == entry.get("ranking", False)
    assert specs["c4_demo"].formatting == specs["wiki_demo"].formatting == "text"
    assert specs["c4_demo"].columns == {"text": "text"}
    assert specs["redpajama_v2"].formatting == "text" and specs["redpajama_v2"].columns == {"text": "raw_content"}
    assert specs["kto_en_demo"].kto and specs["kto_en_demo"].tag("role_tag") == "role"
    assert specs["dpo_en_demo"].formatting == "sharegpt" and specs["dpo_en_demo"].ranking
    assert specs["adgen_train"].columns == {"prompt": "content", "response": "summary"}


@pytest.mark.parametrize("name", sorted(DEMO_ROWS))
def test_demo_data_sets_load_with_their_row_counts(name, demo_dir, manager):
    records = load_records(name, cfg_for(demo_dir), manager)
    assert len(records) == DEMO_ROWS[name]
    assert records.features == RECORD_FEATURES


def test_alpaca_demos_match_the_raw_json(demo_dir, manager):
    for name in ("alpaca_en_demo", "alpaca_zh_demo"):
        raw = json.loads((demo_dir / f"{name}.json").read_text(encoding="utf-8"))
        records = load_records(name, cfg_for(demo_dir), manager)
        assert len(records) == len(raw)
        assert records["messages"] == [alpaca_messages(row) for row in raw]
        assert set(records["system"]) == {""} and set(records["text"]) == {None}
    # an input column is appended to the instruction on a new line
    with_input = next(i for i, row in enumerate(raw) if row["input"])
    assert (
        records[with_input]["messages"][0]["content"] == f"{raw[with_input]['instruction']}\n{raw[with_input]['input']}"
    )


def test_identity_placeholders_are_filled_from_the_config(demo_dir, manager):
    raw = json.loads((demo_dir / "identity.json").read_text(encoding="utf-8"))
    cfg = cfg_for(demo_dir, placeholders={"name": "Nimbus", "author": "Acme Labs"})
    records = load_records("identity", cfg, manager)

    def fill(text):
        return text.replace("{{name}}", "Nimbus").replace("{{author}}", "Acme Labs")

    assert records["messages"] == [alpaca_messages(row, fill) for row in raw]
    assert not any("{{" in m["content"] for msgs in records["messages"] for m in msgs)
    named = sum("{{name}}" in row["output"] for row in raw)
    assert named > 50 and sum("Nimbus" in msgs[1]["content"] for msgs in records["messages"]) == named


def test_builtin_identity_has_default_placeholders(manager):
    raw = json.loads((registry.BUILTIN_DIR / "identity.json").read_text(encoding="utf-8"))
    assert 40 <= len(raw) <= 60 and all("{{name}}" in r["output"] or "{{author}}" in r["output"] for r in raw)
    records = load_records("identity", cfg_for(), manager)  # no dataset_dir: the built-in one
    answers = [msgs[1]["content"] for msgs in records["messages"]]
    assert len(records) == len(raw)
    assert answers[0] == raw[0]["output"].replace("{{name}}", "Factory").replace("{{author}}", "the factory team")
    assert not any("{{" in a for a in answers)
    mine = load_records("identity", cfg_for(placeholders={"name": "Zed"}), manager)
    assert "Zed" in mine[0]["messages"][1]["content"] and "the factory team" in mine[0]["messages"][1]["content"]


def test_dpo_demo_is_a_sharegpt_preference_set(demo_dir, manager):
    raw = json.loads((demo_dir / "dpo_en_demo.json").read_text(encoding="utf-8"))
    records = load_records("dpo_en_demo", cfg_for(demo_dir), manager)
    assert records["messages"] == [sharegpt_messages(row["conversations"]) for row in raw]
    assert records["system"] == [sharegpt_system(row["conversations"]) for row in raw]
    assert sum(bool(s) for s in records["system"]) == 80
    assert records["chosen"] == [{"role": "assistant", "content": row["chosen"]["value"]} for row in raw]
    assert records["rejected"] == [{"role": "assistant", "content": row["rejected"]["value"]} for row in raw]
    assert all(msgs[-1]["role"] == "user" for msgs in records["messages"])


def test_kto_demo_keeps_labels(demo_dir, manager):
    raw = json.loads((demo_dir / "kto_en_demo.json").read_text(encoding="utf-8"))
    records = load_records("kto_en_demo", cfg_for(demo_dir), manager)
    assert records["label"] == [row["label"] for row in raw]
    assert Counter(records["label"])[True] == sum(row["label"] for row in raw)
    assert records["messages"] == [
        [{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in raw
    ]
    # the same file given by path is told to be OpenAI messages + label, and aligns identically
    by_path = load_records(str(demo_dir / "kto_en_demo.json"), cfg_for(), manager)
    assert by_path["messages"] == records["messages"] and by_path["label"] == records["label"]


def test_glaive_toolcall_demo_has_tool_turns(demo_dir, manager):
    raw = json.loads((demo_dir / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    records = load_records("glaive_toolcall_en_demo", cfg_for(demo_dir), manager)
    assert records["messages"] == [sharegpt_messages(row["conversations"]) for row in raw]
    assert records["tools"] == [row["tools"] for row in raw]
    roles = Counter(m["role"] for msgs in records["messages"] for m in msgs)
    assert roles["function_call"] > 0 and roles["observation"] > 0
    call = next(m for msgs in records["messages"] for m in msgs if m["role"] == "function_call")
    assert set(json.loads(call["content"])) == {"name", "arguments"}


def test_plain_text_demos(demo_dir, manager):
    lines = [json.loads(line)["text"] for line in (demo_dir / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    c4 = load_records("c4_demo", cfg_for(demo_dir), manager)
    assert c4["text"] == lines and all(m == [] for m in c4["messages"])
    wiki = load_records("wiki_demo", cfg_for(demo_dir), manager)
    assert wiki["text"] == (demo_dir / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    "file,formatting",
    [
        ("alpaca_en_demo.json", "alpaca"),
        ("dpo_en_demo.json", "sharegpt"),
        ("glaive_toolcall_en_demo.json", "sharegpt"),
        ("c4_demo.jsonl", "text"),
        ("wiki_demo.txt", "text"),
    ],
)
def test_a_file_path_aligns_like_its_described_name(file, formatting, demo_dir, manager):
    name = file.split(".")[0]
    by_name = load_records(name, cfg_for(demo_dir), manager)
    by_path = load_records(str(demo_dir / file), cfg_for(), manager)
    assert registry.resolve(str(demo_dir / file), None).formatting is None  # told from the columns once loaded
    assert by_path["messages"] == by_name["messages"] and by_path["text"] == by_name["text"]
    assert by_path["chosen"] == by_name["chosen"] and by_path["tools"] == by_name["tools"]
    if file.endswith(".json"):
        first = json.loads((demo_dir / file).read_text(encoding="utf-8"))[0]
        spec = detect_format(registry.DatasetSpec(name=file), list(first), first, manager)
        assert spec.formatting == formatting


# -- file types, folders, saved data sets, descriptors ---------------------------------------

ROWS = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(12)]


def test_every_file_type_and_folder_reads_the_same_rows(tmp_path, manager):
    table = datasets.Dataset.from_list(ROWS)
    paths = {}
    paths["json"] = write_json(tmp_path / "rows.json", ROWS)
    paths["jsonl"] = tmp_path / "rows.jsonl"
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    table.to_csv(str(tmp_path / "rows.csv"), index=False)
    paths["csv"] = tmp_path / "rows.csv"
    table.to_parquet(str(tmp_path / "rows.parquet"))
    paths["parquet"] = tmp_path / "rows.parquet"
    table.save_to_disk(str(tmp_path / "saved"))
    paths["saved"] = tmp_path / "saved"
    datasets.DatasetDict({"train": table, "test": table.select(range(2))}).save_to_disk(str(tmp_path / "saved_dict"))
    paths["saved_dict"] = tmp_path / "saved_dict"
    shutil.copy(next((tmp_path / "saved").glob("*.arrow")), tmp_path / "rows.arrow")
    paths["arrow"] = tmp_path / "rows.arrow"
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(3):
        (folder / f"part{k}.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[k * 4 : (k + 1) * 4]))
    paths["folder"] = folder
    expected = [alpaca_messages(row) for row in ROWS]
    for kind, path in paths.items():
        records = load_records(str(path), cfg_for(), manager)
        assert records["messages"] == expected, kind

    text = tmp_path / "notes.txt"
    text.write_text("first line\n\nsecond line\n")
    notes = load_records(str(text), cfg_for(), manager)
    assert notes["text"] == ["first line", "second line"]  # the empty line is dropped


def test_own_yaml_descriptor_maps_columns_and_tags(tmp_path, manager):
    datasets.Dataset.from_list([{"q": "2+2?", "ctx": "math", "a": "4", "sys": "Be brief."}]).to_csv(
        str(tmp_path / "qa.csv"), index=False
    )
    chats = [
        {
            "dialog": [
                {"speaker": "sys", "text": "Pirate mode."},
                {"speaker": "me", "text": "hi"},
                {"speaker": "bot", "text": "arr"},
            ]
        }
    ]
    (tmp_path / "chats.jsonl").write_text(json.dumps(chats[0]) + "\n")
    (tmp_path / "datasets.yaml").write_text(
        "qa:\n  file: qa.csv\n  format: alpaca\n  columns: {prompt: q, query: ctx, response: a, system: sys}\n"
        "pirate:\n  file: chats.jsonl\n  format: sharegpt\n  columns: {messages: dialog}\n"
        "  tags: {role_tag: speaker, content_tag: text, user_tag: me, assistant_tag: bot, system_tag: sys}\n"
    )
    cfg = cfg_for(tmp_path)
    qa = load_records("qa", cfg, manager)[0]
    assert qa["messages"] == [{"role": "user", "content": "2+2?\nmath"}, {"role": "assistant", "content": "4"}]
    assert qa["system"] == "Be brief."
    pirate = load_records("pirate", cfg, manager)[0]
    assert pirate["system"] == "Pirate mode."
    assert pirate["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "arr"}]


def test_openai_messages_with_tool_calls(tmp_path, manager):
    row = {
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
            },
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "It is 21 degrees."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    record = load_records(str(write_json(tmp_path / "tools.json", [row])), cfg_for(), manager)[0]
    assert record["system"] == "You can call tools."
    assert [m["role"] for m in record["messages"]] == ["user", "function_call", "observation", "assistant"]
    assert json.loads(record["messages"][1]["content"]) == {"name": "weather", "arguments": {"city": "Paris"}}
    assert json.loads(record["tools"]) == row["tools"]


def test_alpaca_history_system_ranking_and_kto(tmp_path, manager):
    rows = [
        {
            "instruction": "and 3+3?",
            "input": "",
            "output": "6",
            "system": "math tutor",
            "history": [["1+1?", "2"], ["2+2?", "4"]],
        }
    ]
    record = load_records(str(write_json(tmp_path / "hist.json", rows)), cfg_for(), manager)[0]
    assert [m["content"] for m in record["messages"]] == ["1+1?", "2", "2+2?", "4", "and 3+3?", "6"]
    assert record["system"] == "math tutor"
    pairs = [{"instruction": "Say hi", "input": "", "chosen": "Hi!", "rejected": "No."}]
    pair = load_records(str(write_json(tmp_path / "pairs.json", pairs)), cfg_for(), manager)[0]
    assert pair["messages"] == [{"role": "user", "content": "Say hi"}]
    assert (pair["chosen"]["content"], pair["rejected"]["content"]) == ("Hi!", "No.")
    kto = [
        {"instruction": "Say hi", "output": "Hi!", "label": True},
        {"instruction": "Say hi", "output": "Go away", "label": False},
    ]
    labelled = load_records(str(write_json(tmp_path / "kto.json", kto)), cfg_for(), manager)
    assert labelled["label"] == [True, False] and labelled[1]["messages"][-1]["content"] == "Go away"


def test_a_plugin_aligner_is_used_through_the_hook(tmp_path, manager):
    class QA:
        def columns(self, spec):
            return {"Q", "A"}

        def align(self, row, spec):
            record = empty_record()
            record["messages"] = [{"role": "user", "content": row["Q"]}, {"role": "assistant", "content": row["A"]}]
            return record

    class Plugin:
        @hookimpl
        def register_aligners(self, register):
            register("qa", QA())

    manager.register_plugin(Plugin(), "qa-plugin")
    write_json(tmp_path / "qa.json", [{"Q": "why?", "A": "because"}])
    (tmp_path / "datasets.yaml").write_text("faq:\n  file: qa.json\n  format: qa\n")
    record = load_records("faq", cfg_for(tmp_path), manager)[0]
    assert record["messages"][1] == {"role": "assistant", "content": "because"}


def test_builtin_plugin_registers_aligners_without_importing_datasets(plugin_manager):
    assert {"alpaca", "sharegpt", "openai", "text"} <= set(plugin_manager.names("aligners"))
    code = (
        "import sys; from factory.plugins import PluginManager; m = PluginManager(entry_points=False, use_env=False); "
        "assert 'alpaca' in m.names('aligners'); print(sorted(k for k in sys.modules if k.split('.')[0] in ('datasets', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_package_data_ships_the_builtin_data():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "factory.data.builtin" in setup["packages"]
    folder = root / "core" / "data" / "builtin"
    shipped = {p.name for g in setup["package-data"]["factory.data.builtin"] for p in folder.glob(g)}
    assert {"identity.json", "datasets.yaml"} <= shipped


# -- hub ids ---------------------------------------------------------------------------------


def test_uncached_hub_id_says_offline_in_one_sentence(manager):
    message = error_of(lambda: load_records("nobody-here/no_such_set", cfg_for(), manager))
    assert "offline" in message and "nobody-here/no_such_set" in message and "local copy" in message


def test_hub_entry_of_dataset_info_says_offline(demo_dir, manager):
    message = error_of(lambda: load_records("alpaca_en", cfg_for(demo_dir), manager))
    assert "llamafactory/alpaca_en" in message and "offline" in message
    assert "ModelScope" in error_of(lambda: load_records("deepctrl", cfg_for(demo_dir), manager))


def test_hub_id_in_the_datasets_cache_loads_offline(tmp_path, manager, monkeypatch, demo_dir):
    datasets.load_dataset(
        "json", data_files=str(demo_dir / "identity.json"), cache_dir=str(tmp_path / "build"), split="train"
    )
    built = next((tmp_path / "build" / "json").glob("*/0.0.0/*/"))
    cached = tmp_path / "cache" / "acme___tiny_set" / "default" / "0.0.0" / built.name
    shutil.copytree(built, cached)
    (cached / "json-train.arrow").rename(cached / "tiny_set-train.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    records = load_records("acme/tiny_set", cfg_for(), manager)
    assert len(records) == 91 and records[0]["messages"][0]["content"] == "hi"


def test_hub_id_downloaded_as_snapshot_loads_offline(tmp_path, manager, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "datasets--acme--snap"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    data = repo / "snapshots" / "0123456789abcdef" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(7)))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    records = load_records("acme/snap", cfg_for(), manager)
    assert records["text"] == [f"doc {i}" for i in range(7)]


# -- streaming, sampling, splitting ----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alpaca_en_demo", "dpo_en_demo", "kto_en_demo", "glaive_toolcall_en_demo", "c4_demo", "wiki_demo"]
)
def test_streaming_gives_the_same_first_records(name, demo_dir, manager):
    eager = load_records(name, cfg_for(demo_dir), manager)
    streamed = load_records(name, cfg_for(demo_dir, streaming=True), manager)
    assert isinstance(streamed, datasets.IterableDataset)
    assert list(streamed.take(5)) == [eager[i] for i in range(5)]


def test_streaming_does_not_materialise(demo_dir, manager):
    streamed = load_records("alpaca_en_demo", cfg_for(demo_dir, streaming=True, max_samples=3), manager)
    assert isinstance(streamed, datasets.IterableDataset) and len(list(streamed)) == 3


def test_max_samples_takes_the_first_rows(demo_dir, manager):
    full = load_records("alpaca_en_demo", cfg_for(demo_dir), manager)
    few = load_records("alpaca_en_demo", cfg_for(demo_dir, max_samples=10), manager)
    assert few["messages"] == full["messages"][:10]


def test_val_size_fraction_and_count(demo_dir, manager):
    bundle = load_data(cfg_for(demo_dir, dataset="alpaca_en_demo", val_size=0.1, seed=1), manager)
    assert (len(bundle.train), len(bundle.eval)) == (899, 100)
    full = load_records("alpaca_en_demo", cfg_for(demo_dir), manager)["messages"]
    assert sorted(map(str, list(bundle.train["messages"]) + list(bundle.eval["messages"]))) == sorted(map(str, full))
    again = load_data(cfg_for(demo_dir, dataset="alpaca_en_demo", val_size=0.1, seed=1), manager)
    assert again.eval["messages"] == bundle.eval["messages"]  # the seed fixes the split
    counted = load_data(cfg_for(demo_dir, dataset="identity", val_size=16), manager)
    assert (len(counted.train), len(counted.eval)) == (75, 16)
    assert load_data(cfg_for(demo_dir, dataset="identity", val_size=16), manager, eval_split=False).eval is None
    streamed = load_data(cfg_for(demo_dir, dataset="identity", val_size=16, streaming=True), manager)
    assert len(list(streamed.eval)) == 16 and len(list(streamed.train)) == 75
    assert "number of rows" in error_of(
        lambda: load_data(cfg_for(demo_dir, dataset="identity", val_size=0.5, streaming=True), manager)
    )
    assert "leaves none" in error_of(lambda: load_data(cfg_for(demo_dir, dataset="identity", val_size=91), manager))


def test_eval_dataset(demo_dir, manager):
    bundle = load_data(cfg_for(demo_dir, dataset="identity", eval_dataset=["c4_demo", "wiki_demo"]), manager)
    assert len(bundle.train) == 91 and len(bundle.eval) == 330
    assert "val_size" in error_of(
        lambda: load_data(cfg_for(demo_dir, dataset="identity", eval_dataset="c4_demo", val_size=0.1), manager)
    )


def test_num_samples_in_a_descriptor(tmp_path, manager):
    write_json(tmp_path / "rows.json", ROWS)
    (tmp_path / "datasets.yaml").write_text(
        "few:\n  file: rows.json\n  num_samples: 5\nmany:\n  file: rows.json\n  num_samples: 30\n"
    )
    few = load_records("few", cfg_for(tmp_path), manager)
    many = load_records("many", cfg_for(tmp_path), manager)
    assert len(few) == 5 and len({m[0]["content"] for m in few["messages"]}) == 5
    assert len(many) == 30 and Counter(m[0]["content"] for m in many["messages"]).most_common(1)[0][1] == 3


def test_alignment_uses_the_datasets_cache(demo_dir, manager):
    first = load_records("glaive_toolcall_en_demo", cfg_for(demo_dir), manager)
    second = load_records("glaive_toolcall_en_demo", cfg_for(demo_dir), manager)
    assert first.cache_files and first.cache_files == second.cache_files
    parallel = load_records("alpaca_zh_demo", cfg_for(demo_dir, preprocessing_num_workers=2), manager)
    assert parallel["messages"] == load_records("alpaca_zh_demo", cfg_for(demo_dir), manager)["messages"]


# -- merging ---------------------------------------------------------------------------------


def tagged(tmp_path: Path, tag: str, count: int) -> str:
    path = tmp_path / f"{tag}.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"{tag} {i}"}) for i in range(count)))
    return str(path)


def test_concat_then_shuffle(tmp_path, manager):
    parts = [tagged(tmp_path, "a", 30), tagged(tmp_path, "b", 20)]
    merged = load_data(cfg_for(dataset=parts), manager).train
    texts = merged["text"]
    assert sorted(texts) == sorted([f"a {i}" for i in range(30)] + [f"b {i}" for i in range(20)])
    assert texts[:30] != [f"a {i}" for i in range(30)]  # shuffled, not blocks
    assert load_data(cfg_for(dataset=parts), manager).train["text"] == texts  # seeded


@pytest.mark.parametrize("streaming", [False, True])
def test_interleave_round_robin_lengths(tmp_path, manager, streaming):
    parts = [tagged(tmp_path, "a", 3), tagged(tmp_path, "b", 5)]
    under = load_data(cfg_for(dataset=parts, mix_strategy="interleave_under", streaming=streaming), manager).train
    over = load_data(cfg_for(dataset=parts, mix_strategy="interleave_over", streaming=streaming), manager).train
    under_texts = [r["text"] for r in under]
    over_texts = [r["text"] for r in over]
    if streaming:  # a stream stops right after the shortest part's last row: (3 - 1) * 2 + 1
        assert under_texts == ["a 0", "b 0", "a 1", "b 1", "a 2"]
    else:  # map-style data finishes the round: 2 parts * 3 rows
        assert under_texts == ["a 0", "b 0", "a 1", "b 1", "a 2", "b 2"]
    # all_exhausted oversamples until every part has been seen in full: 2 parts * 5 rows
    assert len(over_texts) == 10 and {f"b {i}" for i in range(5)} <= set(over_texts)
    assert Counter(t[0] for t in over_texts) == {"a": 5, "b": 5}


@pytest.mark.parametrize("streaming", [False, True])
def test_interleave_probabilities_are_respected(tmp_path, manager, streaming):
    parts = [tagged(tmp_path, "a", 3000), tagged(tmp_path, "b", 3000)]
    cfg = cfg_for(dataset=parts, mix_strategy="interleave_under", interleave_probs=[0.8, 0.2], streaming=streaming)
    texts = [r["text"] for r in load_data(cfg, manager).train]
    share = Counter(t[0] for t in texts)
    assert share["a"] == 3000  # first_exhausted: stops when the likelier part runs out
    assert 0.77 < share["a"] / len(texts) < 0.83


def test_merge_checks_probabilities(tmp_path, manager):
    parts = [tagged(tmp_path, "a", 3), tagged(tmp_path, "b", 5)]
    assert "one probability per data set" in error_of(
        lambda: load_data(cfg_for(dataset=parts, mix_strategy="interleave_over", interleave_probs=[1.0]), manager)
    )
    assert "sum to 1" in error_of(
        lambda: load_data(cfg_for(dataset=parts, mix_strategy="interleave_over", interleave_probs=[0.5, 0.6]), manager)
    )
    assert "mix_strategy" in error_of(lambda: merge([datasets.Dataset.from_dict({"x": [1]})], probabilities=[1.0]))


# -- bad input: one sentence each ------------------------------------------------------------


def test_missing_column_names_file_row_and_expected_columns(tmp_path, manager):
    path = write_json(tmp_path / "misnamed.json", [{"instruction": "hi", "answer": "hello"}])
    (tmp_path / "datasets.yaml").write_text("misnamed:\n  file: misnamed.json\n  format: alpaca\n")
    message = error_of(lambda: load_records("misnamed", cfg_for(tmp_path), manager))
    assert str(path) in message and "row 1" in message and "'output'" in message
    assert "it has instruction, answer" in message and "expects the columns instruction, output" in message
    (tmp_path / "datasets.yaml").write_text(
        "misnamed:\n  file: misnamed.json\n  columns: {prompt: instruction, response: outptu}\n"
    )
    message = error_of(lambda: load_records("misnamed", cfg_for(tmp_path), manager))
    assert "no column 'outptu'" in message and "expects the columns instruction, outptu" in message


def test_null_value_in_one_row_names_that_row(tmp_path, manager):
    rows = [dict(ROWS[0]), dict(ROWS[1]), {"instruction": "third", "input": ""}]
    path = write_json(tmp_path / "holes.json", rows)
    message = error_of(lambda: load_records(str(path), cfg_for(), manager))
    assert str(path) in message and "row 3" in message and "'output'" in message and "instruction, output" in message
    # the same error crosses worker processes
    again = error_of(lambda: load_records(str(path), cfg_for(preprocessing_num_workers=2), manager))
    assert "row 3" in again


def test_bad_sharegpt_role_and_kto_label_name_the_row(tmp_path, manager):
    turns = [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]
    path = write_json(tmp_path / "roles.json", [{"conversations": turns}])
    message = error_of(lambda: load_records(str(path), cfg_for(), manager))
    assert "row 1" in message and "'bot'" in message and "human" in message
    kto = write_json(
        tmp_path / "label.json",
        [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": True},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": "maybe"},
        ],
    )
    assert "row 2" in error_of(lambda: load_records(str(kto), cfg_for(), manager))


def test_malformed_jsonl_line_is_named(tmp_path, manager):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three",}\n{"text": "four"}\n')
    message = error_of(lambda: load_records(str(path), cfg_for(), manager))
    assert str(path) in message and "line 3" in message
    array = tmp_path / "broken.json"
    array.write_text('[\n {"text": "one"},\n {"text": "two"\n]\n')
    assert "line 4" in error_of(lambda: load_records(str(array), cfg_for(), manager))


def test_unknown_formats_list_the_available_ones(tmp_path, manager):
    write_json(tmp_path / "rows.json", ROWS)
    (tmp_path / "datasets.yaml").write_text("rows:\n  file: rows.json\n  format: alpacca\n")
    message = error_of(lambda: load_records("rows", cfg_for(tmp_path), manager))
    assert "'alpacca'" in message and "did you mean 'alpaca'" in message and "alpaca, openai, sharegpt, text" in message
    sheet = tmp_path / "rows.xlsx"
    sheet.write_bytes(b"PK")
    message = error_of(lambda: load_records(str(sheet), cfg_for(), manager))
    assert ".xlsx" in message and ".json, .jsonl, .csv, .parquet, .txt, .arrow" in message
    (tmp_path / "datasets.yaml").write_text("rows:\n  file: rows.json\n  file_type: excel\n")
    assert "arrow, csv, json, parquet, text" in error_of(lambda: load_records("rows", cfg_for(tmp_path), manager))


def test_unknown_data_set_name_lists_the_offer(demo_dir, manager):
    message = error_of(lambda: load_records("alpaca_en_dmo", cfg_for(demo_dir), manager))
    assert "unknown data set 'alpaca_en_dmo'" in message and "did you mean 'alpaca_en_demo'" in message
    assert "alpaca_en_demo, alpaca_gpt4_en" in message and "and 84 more" in message and str(demo_dir) in message
    assert "built-in" in error_of(lambda: load_records("nothing_like_it", cfg_for(), manager))


def test_empty_after_filtering_names_the_filter(tmp_path, manager):
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}, {"from": "human", "value": "bye?"}]
    path = write_json(tmp_path / "open.json", [{"conversations": turns}] * 3)
    message = error_of(lambda: load_records(str(path), cfg_for(), manager))
    assert (
        "empty after filtering: all 3 rows were dropped as conversations that do not end with an assistant turn"
        in message
    )
    mixed = write_json(tmp_path / "mixed.json", [{"conversations": turns}, {"conversations": turns[:2]}])
    bundle = load_data(cfg_for(dataset=str(mixed)), manager)
    assert len(bundle.train) == 1 and bundle.dropped[str(mixed)] == {
        "conversations that do not end with an assistant turn": 1
    }
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    assert "empty texts" in error_of(lambda: load_records(str(blank), cfg_for(), manager))


def test_missing_file_says_so(tmp_path, demo_dir, manager):
    message = error_of(lambda: load_records(str(tmp_path / "nope.json"), cfg_for(), manager))
    assert "does not exist" in message and "nope.json" in message
    # a described file that is not there (dataset_info.json lists files the demo folder lacks)
    message = error_of(lambda: load_records("dpo_zh_demo", cfg_for(demo_dir), manager))
    assert "dpo_zh_demo.json" in message and "does not exist" in message
    assert "does not exist" in error_of(
        lambda: load_records("identity", cfg_for(dataset_dir=str(tmp_path / "nodir")), manager)
    )


def test_bad_descriptor_keys_are_named(tmp_path, manager):
    (tmp_path / "datasets.yaml").write_text("rows:\n  file: rows.json\n  colums: {prompt: q}\n")
    assert "did you mean 'columns'" in error_of(lambda: load_records("rows", cfg_for(tmp_path), manager))
    (tmp_path / "datasets.yaml").write_text("rows:\n  file: rows.json\n  columns: {promt: q}\n")
    assert "did you mean 'prompt'" in error_of(lambda: load_records("rows", cfg_for(tmp_path), manager))


def test_media_columns_and_unknown_shapes_are_refused(demo_dir, tmp_path, manager):
    assert "text only" in error_of(lambda: load_records("mllm_demo", cfg_for(demo_dir), manager))
    path = write_json(tmp_path / "weird.json", [{"foo": "a", "bar": "b"}])
    message = error_of(lambda: load_records(str(path), cfg_for(), manager))
    assert "cannot tell the format" in message and "foo, bar" in message


def test_a_name_described_twice_is_refused(tmp_path, manager):
    write_json(tmp_path / "rows.json", ROWS)
    (tmp_path / "datasets.yaml").write_text("rows:\n  file: rows.json\n")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    message = error_of(lambda: load_records("rows", cfg_for(tmp_path), manager))
    assert "described both" in message and "datasets.yaml" in message and "dataset_info.json" in message


@pytest.mark.parametrize("streaming,expected", [(False, 3 * 3), (True, (3 - 1) * 3 + 2)])
def test_interleave_under_length_with_the_shortest_in_the_middle(tmp_path, manager, streaming, expected):
    parts = [tagged(tmp_path, "a", 5), tagged(tmp_path, "b", 3), tagged(tmp_path, "c", 4)]
    cfg = cfg_for(dataset=parts, mix_strategy="interleave_under", streaming=streaming)
    texts = [r["text"] for r in load_data(cfg, manager).train]
    assert len(texts) == expected and texts[:3] == ["a 0", "b 0", "c 0"]
