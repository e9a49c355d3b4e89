"""Every packaged template against its family's official Jinja template, byte for byte.

The official templates are under tests/fixtures/templates/ (sources.yaml says where each was
copied from) and are rendered by transformers' own renderer. Each conversation is checked whole,
ending in a generation prompt and ending open; one differing character fails the test and names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factory.data.template import PACKAGED
from factory.data.template_check import SAMPLES, check, first_difference, modes, render_official

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
SOURCES: dict[str, dict] = yaml.safe_load((FIXTURES / "sources.yaml").read_text(encoding="utf-8"))

# Packaged templates no official Jinja template exists for (docs/templates.md says why).
NO_OFFICIAL_JINJA = {"alpaca", "default", "empty", "vicuna", "falcon", "baichuan2"}
# Verified against a real tokenizer's own template elsewhere (tests/test_template_options.py).
VERIFIED_ELSEWHERE = {"smollm"}
# Official templates exist but no stored public copy was found (docs/templates.md lists them).
NOT_FOUND = {"deepseek3", "gemma3", "intern", "llama2", "olmo", "qwen2", "solar", "yi", "zephyr"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "templates.md"


def _cases() -> list[tuple[str, str, str]]:
    return [(fixture, name, sample.name)
            for fixture, entry in SOURCES.items()
            for name in entry["templates"]
            for sample in SAMPLES if sample.needs <= set(entry["supports"])]


@pytest.mark.parametrize("fixture, name, sample", _cases())
def test_packaged_template_renders_the_official_text(fixture, name, sample):
    entry = SOURCES[fixture]
    jinja = (FIXTURES / entry["file"]).read_text(encoding="utf-8")
    conversation = next(s for s in SAMPLES if s.name == sample)
    kwargs = {**(entry.get("kwargs") or {}), **(entry["templates"][name] or {})}
    results = check(PACKAGED.get(name), jinja, [conversation], bos_token=entry["bos_token"],
                    eos_token=entry["eos_token"], **kwargs)
    assert [r.mode for r in results] == [mode for mode, _, _ in modes(conversation)]
    failures = [f"{r.mode}: {r.error or r.difference}" for r in results if r.error or r.difference]
    assert not failures, f"{name} vs {entry['model']} on '{sample}':\n" + "\n".join(failures)


def test_every_packaged_template_is_verified_or_declared_without_an_official_jinja():
    verified = {name for entry in SOURCES.values() for name in entry["templates"]}
    unverified = set(PACKAGED.names()) - verified - NO_OFFICIAL_JINJA - VERIFIED_ELSEWHERE - NOT_FOUND
    assert not unverified, f"templates with no official fixture: {sorted(unverified)}"
    for name in verified | VERIFIED_ELSEWHERE:
        assert PACKAGED.get(name).source, f"{name} names no official source"


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
    assert first_difference("abc", "abd") .startswith("first difference at character 2")


def test_official_rendering_uses_transformers_and_the_models_tokens():
    entry = SOURCES["llama3.3"]
    jinja = (FIXTURES / entry["file"]).read_text(encoding="utf-8")
    text = render_official(jinja, SAMPLES[0].messages, bos_token="<B>", date_string="01 Jan 2030")
    assert text.startswith("<B><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                           "Today Date: 01 Jan 2030\n\n<|eot_id|>")


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
    for fixture, entry in SOURCES.items():
        claimed = [name for name in entry["templates"] if PACKAGED.get(name).detect]
        if not claimed:
            continue
        tokenizer = SimpleNamespace(chat_template=(FIXTURES / entry["file"]).read_text(encoding="utf-8"),
                                    name_or_path="")
        found = detect_template(tokenizer, manager)
        if found not in claimed:
            wrong[fixture] = found
    assert not wrong, f"auto picks another template for these official templates: {wrong}"
