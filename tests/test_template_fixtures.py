"""Every packaged template against its family's official Jinja template, byte for byte.

The official templates are under tests/fixtures/templates/ (sources.yaml says where each was
copied from) and are rendered by transformers' own renderer. Each conversation is checked whole,
ending in a generation prompt and ending open; one differing character fails the test and names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from factory.data.template import PACKAGED
from factory.data.template_check import SAMPLES, check, first_difference, modes, render_official
from factory.data.template_text import fill

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
SOURCES: dict[str, dict] = yaml.safe_load((FIXTURES / "sources.yaml").read_text(encoding="utf-8"))
JINJA = {fixture: entry for fixture, entry in SOURCES.items() if entry.get("kind", "jinja") == "jinja"}
# Formats whose models publish no chat template, verified against LLaMA-Factory's or FastChat's definition.
REFERENCES = {fixture: entry for fixture, entry in SOURCES.items() if fixture not in JINJA}

# Verified against a real tokenizer's own template elsewhere (tests/test_template_options.py).
VERIFIED_ELSEWHERE = {"smollm"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "templates.md"


def _cases(entries: Mapping[str, dict]) -> list[tuple[str, str, str]]:
    return [
        (fixture, name, sample.name)
        for fixture, entry in entries.items()
        for name in entry["templates"]
        for sample in SAMPLES
        if sample.needs <= set(entry["supports"])
    ]


@pytest.mark.parametrize("fixture, name, sample", _cases(JINJA))
def test_packaged_template_renders_the_official_text(fixture, name, sample):
    entry = SOURCES[fixture]
    jinja = (FIXTURES / entry["file"]).read_text(encoding="utf-8")
    conversation = next(s for s in SAMPLES if s.name == sample)
    kwargs = {**(entry.get("kwargs") or {}), **(entry["templates"][name] or {})}
    results = check(
        PACKAGED.get(name), jinja, [conversation], bos_token=entry["bos_token"], eos_token=entry["eos_token"], **kwargs
    )
    assert [r.mode for r in results] == [mode for mode, _, _ in modes(conversation)]
    failures = [f"{r.mode}: {r.error or r.difference}" for r in results if r.error or r.difference]
    assert not failures, f"{name} vs {entry['model']} on '{sample}':\n" + "\n".join(failures)


def test_every_packaged_template_is_verified():
    verified = {name for entry in SOURCES.values() for name in entry["templates"]}
    unverified = set(PACKAGED.names()) - verified - VERIFIED_ELSEWHERE
    assert not unverified, f"templates with no fixture: {sorted(unverified)}"
    for name in verified | VERIFIED_ELSEWHERE:
        assert PACKAGED.get(name).source, f"{name} names no source"


def test_templates_verified_against_a_reference_format_say_so_and_are_listed():
    marked = {
        name: PACKAGED.get(name).verified_against
        for name in PACKAGED.names()
        if PACKAGED.get(name).verified_against != "official"
    }
    assert marked == {name: entry["kind"] for entry in REFERENCES.values() for name in entry["templates"]}
    listed = next(
        part for part in DOC.read_text(encoding="utf-8").split("\n\n") if part.startswith("Without an official")
    )
    assert all(f"`{name}`" in listed for name in marked), listed


# -- formats whose models publish no chat template ------------------------------------------------
# LLaMA-Factory renders a conversation from its templates' slot lists; these few lines follow its
# code (src/llamafactory/data/, the commit in sources.yaml), so its definitions can be compared with
# factory's templates without installing it:
#   template.py register_template: a missing format_user is ["{{content}}"]; a missing format_assistant
#     is ["{{content}}", {"eos_token"}], or ["{{content}}"] with efficient_eos; a missing format_system
#     is ["{{content}}"] (the default user formatter, not the given format_user); default_system "".
#   template.py Template._encode: system = system or default_system; the first message is preceded by
#     format_prefix and, when there is a system text, format_system(content=system); user messages use
#     format_user(content, idx), assistant messages format_assistant(content).
#   formatter.py StringFormatter.apply: each "{{name}}" of a text slot is replaced by its value, once;
#     Template._convert_elements_to_ids: {"eos_token"}/{"bos_token"} slots are those tokens, {"token": t} is t.
#   processor/supervised.py _encode_data_example: with efficient_eos, the eos follows the whole example.
# It has no add_generation_prompt switch: a conversation ending in a user message ends in the user
# slot, which holds the assistant's header, so "generation" and "open" are the same text.


def _llamafactory_slots(slots: Sequence, values: Mapping[str, str], bos: str, eos: str) -> str:
    out = []
    for slot in slots:
        if isinstance(slot, str):
            for name, value in values.items():
                slot = slot.replace("{{" + name + "}}", value, 1)
            out.append(slot)
        elif "special" in slot:
            out.append({"bos_token": bos, "eos_token": eos}[slot["special"]])
        else:
            out.append(slot["token"])
    return "".join(out)


def render_llamafactory(
    definition: Mapping, messages: Sequence[Mapping], system: str, *, bos: str, eos: str, whole: bool
) -> str:
    efficient = definition.get("efficient_eos", False)
    user = definition.get("format_user", ["{{content}}"])
    assistant = definition.get(
        "format_assistant", ["{{content}}"] if efficient else ["{{content}}", {"special": "eos_token"}]
    )
    system = system or definition.get("default_system", "")
    text = _llamafactory_slots(definition.get("format_prefix", []), {}, bos, eos)
    if system and messages:
        text += _llamafactory_slots(definition.get("format_system", ["{{content}}"]), {"content": system}, bos, eos)
    for index, message in enumerate(messages):
        if message["role"] == "user":
            text += _llamafactory_slots(user, {"content": message["content"], "idx": str(index // 2)}, bos, eos)
        else:
            text += _llamafactory_slots(assistant, {"content": message["content"]}, bos, eos)
    return text + (eos if whole and efficient else "")


# FastChat (fastchat/conversation.py, Conversation.get_prompt, SeparatorStyle.ADD_COLON_TWO): the system
# text and the first separator, then "ROLE: message" and the separators in turn (sep after a user
# message, sep2 after an answer); a generation prompt is the open slot "ASSISTANT:".
def render_fastchat(conversation: Mapping, messages: Sequence[Mapping], system: str, *, generation: bool) -> str:
    seps = [conversation["sep"], conversation["sep2"]]
    text = (system or conversation["system"]) + seps[0]
    for index, message in enumerate(messages):
        text += conversation["roles"][index % 2] + ": " + message["content"] + seps[index % 2]
    return text + (conversation["roles"][1] + ":" if generation else "")


def render_reference(entry: Mapping, messages: Sequence[Mapping], system: str, mode: str) -> str:
    definition = json.loads((FIXTURES / entry["file"]).read_text(encoding="utf-8"))[entry["entry"]]
    if entry["kind"] == "fastchat":
        return render_fastchat(definition, messages, system, generation=mode == "generation")
    return render_llamafactory(
        definition, messages, system, bos=entry["bos_token"], eos=entry["eos_token"], whole=mode == "whole"
    )


@pytest.mark.parametrize("fixture, name, sample", _cases(REFERENCES))
def test_template_renders_its_reference_format(fixture, name, sample):
    entry, template = REFERENCES[fixture], PACKAGED.get(name)
    conversation = next(s for s in SAMPLES if s.name == sample)
    tokenizer = SimpleNamespace(bos_token=entry["bos_token"], eos_token=entry["eos_token"])
    stop = fill(template.final_stop, {"bos_token": entry["bos_token"], "eos_token": entry["eos_token"]})
    failures = []
    for mode, messages, generation in modes(conversation):
        reference = render_reference(entry, messages, conversation.system, mode)
        ours = template.render_text(
            messages, system=conversation.system, add_generation_prompt=generation, tokenizer=tokenizer
        )
        if mode == "whole" and stop and ours == reference + stop:
            ours = reference  # the declared end token after the final answer, where the reference writes none
        difference = first_difference(reference, ours)
        if difference:
            failures.append(f"{mode}: {difference}")
    assert not failures, f"{name} vs {entry['model']} on '{sample}':\n" + "\n".join(failures)


def test_the_reference_renderers_follow_their_code():
    """Hand-checked renderings: LLaMA-Factory's falcon (efficient_eos) and FastChat's vicuna_v1.1, and
    LLaMA-Factory's own vicuna, which drops the spaces FastChat writes (factory follows FastChat)."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    falcon = REFERENCES["llamafactory-falcon"]
    assert render_reference(falcon, chat, "", "whole") == "User: Hi\nFalcon:Hello\n<|endoftext|>"
    assert render_reference(falcon, chat[:1], "Be brief.", "generation") == "Be brief.User: Hi\nFalcon:"
    vicuna = REFERENCES["fastchat-vicuna"]
    assert render_reference(vicuna, chat, "S", "whole") == "S USER: Hi ASSISTANT: Hello</s>"
    assert render_reference(vicuna, chat[:1], "S", "generation") == "S USER: Hi ASSISTANT:"
    assert render_reference(vicuna, chat[:1], "S", "open") == "S USER: Hi "
    llamafactory_vicuna = {**vicuna, "kind": "llamafactory", "file": "llamafactory-templates.json", "entry": "vicuna"}
    assert render_reference(llamafactory_vicuna, chat, "S", "whole") == "SUSER: Hi ASSISTANT:Hello</s>"


def test_every_fixture_names_its_source():
    for fixture, entry in SOURCES.items():
        assert (FIXTURES / entry["file"]).is_file(), fixture
        assert len(entry["commit"]) == 40 and entry["source_repo"].count("/") == 1 and entry["path"], fixture
        assert entry["templates"], fixture


def test_the_check_fails_on_a_single_differing_byte():
    entry = SOURCES["qwen3"]
    jinja = (FIXTURES / entry["file"]).read_text(encoding="utf-8")
    template = PACKAGED.get("qwen3")
    broken = template.model_copy(update={"user": template.user.replace("<|im_end|>\n", "<|im_end|> ")})
    results = check(broken, jinja, SAMPLES[:1], bos_token="", eos_token=entry["eos_token"])
    assert [r.difference is not None for r in results] == [True, True, True]
    assert "<|im_end|>\\n" in results[0].difference and "<|im_end|> " in results[0].difference
    assert first_difference("abc", "abd").startswith("first difference at character 2")


def test_official_rendering_uses_transformers_and_the_models_tokens():
    entry = SOURCES["llama3.3"]
    jinja = (FIXTURES / entry["file"]).read_text(encoding="utf-8")
    text = render_official(jinja, SAMPLES[0].messages, bos_token="<B>", date_string="01 Jan 2030")
    assert text.startswith(
        "<B><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 01 Jan 2030\n\n<|eot_id|>"
    )


def test_the_docs_table_names_every_template_with_its_source():
    text = DOC.read_text(encoding="utf-8")
    for name in PACKAGED.names():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row, f"docs/templates.md has no row for {name}"
        template = PACKAGED.get(name)
        assert (template.source and template.source in row) or "none" in row, row
        assert all(f"`{alias}`" in row for alias in template.aliases), row


def test_auto_tells_each_version_apart_by_its_official_template():
    from types import SimpleNamespace

    from factory.data.template import detect_template
    from factory.plugins import PluginManager

    manager = PluginManager(entry_points=False, use_env=False)
    wrong = {}
    for fixture, entry in JINJA.items():
        claimed = [name for name in entry["templates"] if PACKAGED.get(name).detect]
        if not claimed:
            continue
        tokenizer = SimpleNamespace(
            chat_template=(FIXTURES / entry["file"]).read_text(encoding="utf-8"), name_or_path=""
        )
        found = detect_template(tokenizer, manager)
        if found not in claimed:
            wrong[fixture] = found
    assert not wrong, f"auto picks another template for these official templates: {wrong}"


def test_parallel_results_of_openai_data_render_as_the_official_template():
    """OpenAI-style data with two calls in one turn: the aligner keeps one observation per result, and
    Qwen2.5's template writes both results in one user turn, Mistral's one [TOOL_RESULTS] block each."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from factory.data.formats import OPENAI
    from factory.data.resolve import DatasetSpec

    calls = [
        {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call00002", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
    ]
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call00001", "content": "22"},
        {"role": "tool", "tool_call_id": "call00002", "content": "25"},
        {"role": "assistant", "content": "22 and 25."},
    ]
    record = OPENAI.align({"messages": messages}, DatasetSpec(name="calls", formatting="openai"))
    assert [m["role"] for m in record["messages"]] == [
        "user",
        "function_call",
        "observation",
        "observation",
        "assistant",
    ]
    for fixture, name in (("qwen2.5", "qwen2_5"), ("mistral-nemo", "mistral_nemo")):
        entry = SOURCES[fixture]
        official, _ = render_jinja_template(
            conversations=[messages],
            chat_template=(FIXTURES / entry["file"]).read_text(encoding="utf-8"),
            bos_token=entry["bos_token"],
            eos_token=entry["eos_token"],
        )
        ours = PACKAGED.get(name).render_text(
            record["messages"], tokenizer=SimpleNamespace(bos_token=entry["bos_token"], eos_token=entry["eos_token"])
        )
        assert first_difference(official[0], ours) is None, first_difference(official[0], ours)
    assert official[0].count("[TOOL_RESULTS]") == 2
