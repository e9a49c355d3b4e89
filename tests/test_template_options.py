"""Reasoning data, aliases, what auto chooses from tokenizer files, and factory templates check."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from factory.cli import main
from factory.config import load_config
from factory.data.formats import OPENAI
from factory.data.resolve import DatasetSpec
from factory.data.template import PACKAGED, JinjaTemplate, get_template, template_for_model_type
from factory.data.template_check import REASONING_CHAT, render_official
from factory.data.template_tools import stable_call_id, tool_calls
from factory.errors import ConfigError
from factory.plugins import PluginManager

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
SOURCES = yaml.safe_load((FIXTURES / "sources.yaml").read_text(encoding="utf-8"))
QWEN = SimpleNamespace(bos_token="", eos_token="<|im_end|>")
R1 = SimpleNamespace(bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")


def jinja(name: str) -> str:
    return (FIXTURES / SOURCES[name]["file"]).read_text(encoding="utf-8")


def trained(segments) -> list[str]:
    return [s.text for s in segments if s.trainable]


def untrained(segments) -> str:
    return "".join(s.text for s in segments if not s.trainable)


@pytest.fixture(scope="module")
def manager():
    return PluginManager(entry_points=False, use_env=False)


# -- reasoning -----------------------------------------------------------------------------------


def test_qwen3_trains_the_final_reasoning_and_drops_past_reasoning_as_its_template_does():
    segments = PACKAGED.get("qwen3").render(REASONING_CHAT, tokenizer=QWEN)
    text = "".join(s.text for s in segments)
    assert text == render_official(jinja("qwen3"), REASONING_CHAT, eos_token="<|im_end|>")
    assert "17 × 3 = 51." not in text  # the first answer's reasoning is before the last user turn
    assert trained(segments) == ["51.<|im_end|>", "<think>\n51 + 9 = 60, 六十.\n</think>\n\n60.<|im_end|>"]


def test_reasoning_keep_leaves_the_block_in_the_text_but_untrained():
    segments = PACKAGED.get("qwen3").render(REASONING_CHAT, tokenizer=QWEN, reasoning="keep")
    block = "<think>\n51 + 9 = 60, 六十.\n</think>\n\n"
    assert trained(segments)[-1] == "60.<|im_end|>"
    assert f"<|im_start|>assistant\n{block}" in untrained(segments) and block not in "".join(trained(segments))


def test_reasoning_drop_renders_the_final_answer_without_it():
    segments = PACKAGED.get("qwen3").render(REASONING_CHAT, tokenizer=QWEN, reasoning="drop")
    text = "".join(s.text for s in segments)
    assert "六十" not in text
    # Qwen3 still opens its final answer with an (empty) block, which the model generates itself.
    assert trained(segments)[-1] == "<think>\n\n</think>\n\n60.<|im_end|>"


def test_qwen3_nothink_puts_the_empty_block_in_the_prompt():
    template = PACKAGED.get("qwen3_nothink")
    segments = template.render(REASONING_CHAT, tokenizer=QWEN, reasoning="drop")
    assert trained(segments)[-1] == "60.<|im_end|>"
    prompt = template.render_text(REASONING_CHAT[:3], tokenizer=QWEN, add_generation_prompt=True)
    assert prompt == render_official(
        jinja("qwen3"), REASONING_CHAT[:3], add_generation_prompt=True, eos_token="<|im_end|>", enable_thinking=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_r1_trains_what_the_model_writes_after_its_generation_prompt():
    template = PACKAGED.get("deepseek_r1")
    segments = template.render(REASONING_CHAT, tokenizer=R1)
    text = "".join(s.text for s in segments)
    prompt = render_official(
        jinja("deepseek-r1-distill-llama"),
        REASONING_CHAT[:3],
        add_generation_prompt=True,
        bos_token=R1.bos_token,
        eos_token=R1.eos_token,
    )
    assert prompt.endswith("<｜Assistant｜><think>\n")
    # The final turn is the official prompt followed by the reasoning and the answer; the earlier
    # answer lost its reasoning exactly as the official template drops it.
    assert text == prompt + "51 + 9 = 60, 六十.\n</think>\n\n60.<｜end▁of▁sentence｜>"
    assert trained(segments)[-1] == "51 + 9 = 60, 六十.\n</think>\n\n60.<｜end▁of▁sentence｜>"


def test_an_unknown_reasoning_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="reasoning: 'think' is not a reasoning mode; use one of"):
        PACKAGED.get("qwen3").render(REASONING_CHAT, tokenizer=QWEN, reasoning="think")
    with pytest.raises(ConfigError, match="reasoning"):
        load_config(None, ["reasoning=think"])
    assert load_config(None, ["reasoning=keep", "enable_thinking=false"]).enable_thinking is False


def test_the_openai_aligner_writes_reasoning_content_inline_and_keeps_call_ids():
    spec = DatasetSpec(name="x", formatting="openai")
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call12345", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "content": "r"},
            {"role": "assistant", "content": "\nthe answer", "reasoning_content": "\nthinking\n"},
        ]
    }
    record = OPENAI.align(row, spec)
    assert record["messages"][3]["content"] == "<think>\nthinking\n</think>\n\nthe answer"
    assert [call.id for call in tool_calls(record["messages"][1]["content"])] == ["call12345"]


def test_calls_without_an_id_get_a_stable_nine_character_one():
    content = json.dumps({"name": "f", "arguments": {"a": 1}})
    first, again = tool_calls(content, 3)[0].id, tool_calls(content, 3)[0].id
    assert first == again == stable_call_id(3, 0, "f", {"a": 1})
    assert len(first) == 9 and first.isalnum() and tool_calls(content, 4)[0].id != first


def test_the_run_settings_reach_tokenization(smollm2_path):
    from transformers import AutoTokenizer

    from factory.data.kinds import SUPERVISED
    from factory.data.tokenize import TokenizeOptions

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    batch = {
        "messages": [REASONING_CHAT],
        "system": [""],
        "tools": [""],
        "chosen": [None],
        "rejected": [None],
        "label": [None],
        "text": [None],
    }
    options = TokenizeOptions(kind="supervised", cutoff_len=512)
    labels = {}
    for mode in ("train", "keep"):
        template = PACKAGED.get("qwen3").bind(tokenizer).configure(reasoning=mode)
        out = SUPERVISED.tokenize(batch, tokenizer=tokenizer, template=template, options=options)
        labels[mode] = tokenizer.decode([t for t in out["labels"][0] if t >= 0])
    assert "60, 六十" in labels["train"] and "60, 六十" not in labels["keep"]


# -- aliases -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias, name",
    [
        ("gemma2", "gemma"),
        ("deepseekr1", "deepseek_r1"),
        ("qwen", "qwen2_5"),
        ("ministral", "mistral_nemo"),
        ("intern2", "intern"),
    ],
)
def test_llamafactory_names_are_aliases(manager, alias, name):
    assert PACKAGED.aliases()[alias] == name
    template = get_template(alias, SimpleNamespace(bos_token="<s>", eos_token="</s>"), manager)
    assert template.name == name
    assert manager.get("templates", alias).description == f"alias of {name}"


def test_an_alias_does_not_claim_its_templates_model_types(manager):
    assert template_for_model_type("gemma2", manager) == "gemma"


def test_an_alias_that_names_a_template_is_refused(tmp_path):
    from factory.data.template import TemplateLibrary
    from factory.errors import PluginError

    base = {
        "system": "{{content}}",
        "default_system": "",
        "user": "{{content}}",
        "assistant": "{{content}}",
        "stop_words": [],
        "eos_ends_turn": False,
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"a": base, "b": {**base, "aliases": ["a"]}}))
    with pytest.raises(PluginError, match="'a' names both template 'a' and an alias of 'b'"):
        TemplateLibrary(tmp_path).names()


# -- auto ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.mark.parametrize("fixture, expected", [("qwen3", "qwen3"), ("deepseek-r1-distill-llama", "deepseek_r1")])
def test_auto_uses_the_version_its_jinja_identifies_when_the_jinja_is_not_prefix_consistent(
    smol, manager, fixture, expected
):
    tok = copy.deepcopy(smol)
    tok.chat_template = jinja(fixture)
    template = get_template("auto", tok, manager)
    assert template.name == expected and not isinstance(template, JinjaTemplate)


def test_auto_keeps_a_prefix_consistent_jinja(smol, manager):
    tok = copy.deepcopy(smol)
    tok.chat_template = jinja("llama3.3")
    assert isinstance(get_template("auto", tok, manager), JinjaTemplate)


def test_auto_without_a_jinja_reads_the_vocabulary(smol, manager):
    tok = copy.deepcopy(smol)
    tok.chat_template = None
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|eot_id|>"]})
    assert get_template("auto", tok, manager).name == "llama3"


def test_smollm_renders_what_smollm2s_own_template_renders(smol):
    from factory.data.template_check import SAMPLES, check

    results = check(
        PACKAGED.get("smollm"),
        smol.chat_template,
        [s for s in SAMPLES if not s.needs],
        bos_token=smol.bos_token,
        eos_token=smol.eos_token,
    )
    assert results and all(r.difference is None and r.error is None for r in results), results


# -- factory templates check -----------------------------------------------------------------------


def test_cli_check_passes_for_the_matching_template(capsys):
    code = main(["templates", "check", "qwen3", "--jinja", str(FIXTURES / "qwen3.jinja"), "--eos-token", "<|im_end|>"])
    out = capsys.readouterr().out
    assert code == 0 and "0 differing" in out and out.count("byte-exact") > 20


def test_cli_check_shows_the_first_difference_and_exits_1(capsys):
    code = main(["templates", "check", "qwen2", "--jinja", str(FIXTURES / "qwen3.jinja")])
    out = capsys.readouterr().out
    assert code == 1
    assert "first difference at character 12: official '<|im_start|>user\\n" in out


def test_cli_check_renders_the_users_own_conversations(tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Sé breve."},
                    {"role": "user", "content": "¿Hola?"},
                    {"role": "assistant", "content": "Hola."},
                ]
            }
        )
        + "\n"
    )
    code = main(
        [
            "templates",
            "check",
            "llama3_1",
            "--jinja",
            str(FIXTURES / "llama3.3.jinja"),
            "--data",
            str(data),
            "--bos-token",
            "<|begin_of_text|>",
            "--date-string",
            "26 Jul 2024",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "chats.jsonl#1" in out and "3 byte-exact" in out


def test_cli_check_reads_the_template_and_tokens_of_a_model_folder(smollm2_path, capsys):
    assert main(["templates", "check", "smollm", "--model", str(smollm2_path)]) == 0
    assert "0 differing" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["templates", "check", "qwen3"], "needs the official template: --jinja FILE or --model DIR"),
        (["templates", "check", "qwen3", "--jinja", "/nonexistent.jinja"], "cannot read --jinja /nonexistent.jinja"),
        (
            ["templates", "check", "qwen3", "--model", "/tmp"],
            "--model /tmp is not a folder with a tokenizer_config.json",
        ),
    ],
)
def test_cli_check_errors_are_one_sentence(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
