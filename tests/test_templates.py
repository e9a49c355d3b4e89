"""Chat templates: byte-exact with SmolLM2's own template, every packaged template renders tools, errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib.resources import files
from types import SimpleNamespace

import pytest
import yaml

from factory.data.template import (
    PACKAGED,
    JinjaTemplate,
    Segment,
    Template,
    TemplateLibrary,
    get_template,
    template_for_model_type,
)
from factory.errors import DataError, PluginError
from factory.hookspecs import hookimpl
from factory.plugins import PluginManager

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
REQUIRED = (
    "chatml qwen2 qwen3 llama2 llama3 mistral gemma gemma3 phi3 phi4 deepseek deepseek3 glm4 yi baichuan2 "
    "vicuna alpaca zephyr falcon cohere olmo openchat solar intern default empty"
).split()

CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "Six, of course."},
]

TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
)
CALL_ARGS = {"city": "Paris-7x", "unit": "celsius"}
TOOL_CHAT = [
    {"role": "user", "content": "USER-ASKS-weather-91"},
    {"role": "function_call", "content": json.dumps({"name": "get_weather", "arguments": CALL_ARGS})},
    {"role": "observation", "content": "OBSERVED-sunny-22C"},
    {"role": "assistant", "content": "ANSWER-it-is-sunny-55"},
]
TOOL_SYSTEM = "SYSTEM-PROMPT-x1"
# Their official templates drop past reasoning or move the system prompt, so the generation prompt
# is not a prefix of the whole conversation there either (tests/test_template_fixtures.py holds them to it).
NOT_PREFIX_CONSISTENT = {"deepseek_r1", "qwq", "mistral_nemo", "mistral_v3", "minicpm5_think"}


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def manager():
    return PluginManager(entry_points=False, use_env=False)


def hf_ids(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def trained(segments: list[Segment]) -> list[str]:
    return [s.text for s in segments if s.trainable]


# -- byte-exact with the real SmolLM2 tokenizer -----------------------------------------------


@pytest.mark.parametrize("name", ["auto", "chatml"])
@pytest.mark.parametrize("system", ["You answer in one line.", ""])
def test_smollm2_rendering_equals_apply_chat_template(tokenizer, manager, name, system):
    template = get_template(name, tokenizer, manager)
    assert isinstance(template, JinjaTemplate if name == "auto" else Template)
    hf = ([{"role": "system", "content": system}] if system else []) + CHAT
    # chatml has no default system prompt; SmolLM2's template inserts its own, so pass that one.
    given = system or (SMOL_SYSTEM if name == "chatml" else "")
    segments = template.render(CHAT, system=given)
    text = "".join(s.text for s in segments)

    assert text == tokenizer.apply_chat_template(hf, tokenize=False)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == hf_ids(tokenizer, hf)
    assert trained(segments) == ["It is 4.<|im_end|>", "Six, of course.<|im_end|>"]
    if not system:
        assert SMOL_SYSTEM in text

    prompt = template.render_text(CHAT[:3], system=given, add_generation_prompt=True)
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == hf_ids(
        tokenizer, hf[:-1], add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_auto_learns_the_end_marker_from_the_tokenizer(tokenizer, manager):
    template = get_template("auto", tokenizer, manager)
    # SmolLM2's turn ends with <|im_end|>, which is also its eos.
    assert template.eos_ends_turn is True
    assert template.stop_words == []
    assert template.default_system == ""


def test_auto_describes_tools_in_the_system_text_when_the_jinja_has_no_place_for_them(tokenizer, manager):
    template = get_template("auto", tokenizer, manager)
    segments = template.render(TOOL_CHAT, system=TOOL_SYSTEM, tools=TOOLS)
    text = "".join(s.text for s in segments)
    assert text.startswith(f"<|im_start|>system\n{TOOL_SYSTEM}\n\nYou can use the following tools:\n")
    assert '"get_weather"' in text.partition("<|im_start|>user")[0]
    assert "<|im_start|>tool\nOBSERVED-sunny-22C<|im_end|>" in text
    assert trained(segments) == [TOOL_CHAT[1]["content"] + "<|im_end|>", "ANSWER-it-is-sunny-55<|im_end|>"]


QWEN_LIKE_JINJA = (
    "{%- if messages[0].role == 'system' %}{%- set sys = messages[0].content %}{%- else %}{%- set sys = '' %}{%- endif %}"
    "{%- if tools %}<|im_start|>system\n{{ sys }}# Tools\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}<|im_end|>\n"
    "{%- elif sys %}<|im_start|>system\n{{ sys }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{%- for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_auto_passes_tools_and_tool_calls_to_a_jinja_that_renders_them(tokenizer, manager):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN_LIKE_JINJA
    template = get_template("auto", tok, manager)
    segments = template.render(TOOL_CHAT, system=TOOL_SYSTEM, tools=TOOLS)
    # The oracle: the same conversation written by hand in Hugging Face's message format.
    hf = [
        {"role": "system", "content": TOOL_SYSTEM},
        TOOL_CHAT[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}],
        },
        {"role": "tool", "content": "OBSERVED-sunny-22C"},
        TOOL_CHAT[3],
    ]
    tools = [{"type": "function", "function": spec} for spec in json.loads(TOOLS)]
    assert "".join(s.text for s in segments) == tok.apply_chat_template(hf, tools=tools, tokenize=False)
    call = trained(segments)[0]
    assert call.startswith("<tool_call>") and call.endswith("</tool_call><|im_end|>")
    assert json.loads(call.removeprefix("<tool_call>").removesuffix("</tool_call><|im_end|>"))["arguments"] == CALL_ARGS


def test_auto_refuses_a_jinja_that_is_not_prefix_consistent(tokenizer, manager):
    tok = copy.deepcopy(tokenizer)
    # Like Phi-3's template: an eos closes the conversation only when no generation prompt follows.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% else %}<|endoftext|>{% endif %}"
    )
    with pytest.raises(PluginError, match="not prefix-consistent.*set template: "):
        get_template("auto", tok, manager)


def test_auto_accepts_a_jinja_that_refuses_system_prompts_and_reads_its_end_marker(tokenizer, manager):
    tok = copy.deepcopy(tokenizer)
    # Like Gemma 2's template: no system role, <end_of_turn> closes turns.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    template = get_template("auto", tok, manager)
    assert template.stop_words == ["<end_of_turn>"] and template.eos_ends_turn is False
    assert trained(template.render(CHAT)) == ["It is 4.<end_of_turn>", "Six, of course.<end_of_turn>"]
    with pytest.raises(DataError, match="System role not supported.*set template: llama3"):
        template.render(CHAT, system="Be brief.")


def test_auto_without_a_jinja_picks_the_template_of_the_model_type(tokenizer, manager, tmp_path):
    from transformers import AutoTokenizer

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    for model_type, expected in [("qwen2", "qwen2"), ("gemma3_text", "gemma3"), ("some_new_arch", "default")]:
        folder = tmp_path / model_type
        tok.save_pretrained(folder)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        loaded = AutoTokenizer.from_pretrained(folder)
        assert not loaded.chat_template
        template = get_template("auto", loaded, manager)
        assert template.name == expected
        assert template.render_text(CHAT) == PACKAGED.get(expected).render_text(CHAT, tokenizer=loaded)


# -- every packaged template ------------------------------------------------------------------


def test_the_required_templates_are_packaged():
    assert set(REQUIRED) <= set(PACKAGED.names())
    assert len(PACKAGED.names()) >= 25


def test_package_data_is_found_through_importlib_resources():
    names = {f.name for f in files("factory.chat_templates").iterdir()}
    assert {"chatml.yaml", "llama.yaml", "default.yaml"} <= names


@pytest.mark.parametrize("name", PACKAGED.names())
def test_every_template_renders_a_tool_conversation(tokenizer, name):
    template = PACKAGED.get(name)
    segments = template.render(TOOL_CHAT, system=TOOL_SYSTEM, tools=TOOLS, tokenizer=tokenizer)
    text = "".join(s.text for s in segments)

    # Every message content exactly once, in order (the call as its arguments' JSON after its name).
    arguments = json.dumps(CALL_ARGS, ensure_ascii=False)
    if template.tool_call_argument:  # XML-like calls write each argument in an element of its own
        arguments = template.tool_call_argument.replace("{{key}}", "unit").replace("{{value}}", "celsius")
    position = 0
    # Mistral NeMo's template writes the system prompt only before a final user message.
    system = [] if template.system_in_user == "last" else [TOOL_SYSTEM]
    for piece in [
        *system,
        "USER-ASKS-weather-91",
        "get_weather",
        arguments,
        "OBSERVED-sunny-22C",
        "ANSWER-it-is-sunny-55",
    ]:
        found = text.find(piece, position)
        assert found >= 0, f"{piece!r} missing or out of order in {text!r}"
        if piece != "get_weather":  # the name is also in the tool definitions
            assert text.count(piece) == 1, f"{piece!r} rendered more than once"
        position = found + len(piece)
    assert '"Current weather of a city"' in text[: text.find("USER-ASKS")] or template.system_in_user

    # One trained segment per response turn, each holding its content and closed by an end marker.
    responses = trained(segments)
    assert len(responses) == 2
    assert arguments in responses[0] and "ANSWER-it-is-sunny-55" in responses[1]
    for response in responses:
        assert response == response.rstrip()
    assert responses[1].rstrip().partition("ANSWER-it-is-sunny-55")[2], "nothing after the answer teaches stopping"
    if template.eos_ends_turn:
        assert responses[1].endswith(tokenizer.eos_token)
    assert "".join(s.text for s in segments if not s.trainable).count("ANSWER") == 0

    # What inference renders is exactly the prefix training saw before the answer, except where the
    # family's own template is not prefix-consistent.
    prompt = template.render_text(
        TOOL_CHAT[:3], system=TOOL_SYSTEM, tools=TOOLS, add_generation_prompt=True, tokenizer=tokenizer
    )
    if name in NOT_PREFIX_CONSISTENT:
        return
    assert text.startswith(prompt)
    # the answer turn after it is trained (the text a family's generation prompt leaves to the model)
    rest = text[len(prompt) :]
    assert responses[1] in rest and "ANSWER" not in rest[: rest.index(responses[1])]


@pytest.mark.parametrize("name", PACKAGED.names())
def test_default_system_is_used_only_without_a_system(tokenizer, name):
    template = PACKAGED.get(name)
    plain = template.render_text(CHAT, tokenizer=tokenizer, date_string="1 May 2031")
    default = template.default_system.replace("{{date}}", "1 May 2031")
    if template.default_system:
        assert default in plain
        assert default not in template.render_text(CHAT, system="Other.", tokenizer=tokenizer, date_string="1 May 2031")
    first = [s.text for s in template.render(CHAT, tokenizer=tokenizer) if s.trainable][0]
    assert "It is 4." in first and "2+2" not in first  # (a family's empty reasoning block may open it)


def test_every_yaml_entry_declares_the_documented_keys():
    declared = (
        "description",
        "model_types",
        "system",
        "default_system",
        "user",
        "assistant",
        "stop_words",
        "eos_ends_turn",
    )
    for file in files("factory.chat_templates").iterdir():
        if not file.name.endswith(".yaml"):
            continue
        for name, entry in yaml.safe_load(file.read_text(encoding="utf-8")).items():
            missing = [key for key in declared if key not in entry]
            assert not missing, f"{file.name}: {name} does not declare {missing}"


def test_a_model_type_belongs_to_one_packaged_template():
    owner: dict[str, str] = {}
    for name in PACKAGED.names():
        for model_type in PACKAGED.get(name).model_types:
            assert model_type not in owner, f"{model_type} is declared by {owner[model_type]} and {name}"
            owner[model_type] = name
    assert owner["llama"] == "llama3" and owner["qwen2"] == "qwen2"


# -- errors -----------------------------------------------------------------------------------


def test_unknown_template_lists_the_available_ones(tokenizer, manager):
    with pytest.raises(PluginError) as err:
        get_template("chatmll", tokenizer, manager)
    message = str(err.value)
    assert "did you mean 'chatml'" in message
    assert ", ".join(sorted(manager.names("templates"))) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"asistant": "x"}, r"key 'asistant' is not a template field; did you mean 'assistant'\?"),
        ({"user": "<u>no placeholder</u>"}, r"key 'user' must contain \{\{content\}\} exactly once"),
        ({"user": "{{content}} {{name}}"}, r"key 'user' uses the placeholder \{\{name\}\}"),
        ({"eos_ends_turn": True}, r"key 'eos_ends_turn' is true but the assistant format has no \{\{eos_token\}\}"),
        ({"stop_words": "<end>"}, r"key 'stop_words': Input should be a valid list"),
        ({"user": None}, r"key 'user': Input should be a valid string"),
    ],
)
def test_a_malformed_entry_names_the_file_and_the_key(tmp_path, entry, expected):
    good = {
        "system": "S: {{content}}\n",
        "default_system": "",
        "user": "U: {{content}}\n",
        "assistant": "A: {{content}}<end>\n",
        "stop_words": ["<end>"],
        "eos_ends_turn": False,
    }
    bad = {k: v for k, v in good.items() if k not in entry or entry[k] is not None} | entry
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"good": good, "bad": bad}))
    library = TemplateLibrary(tmp_path)
    assert library.get("good").render_text(CHAT).startswith("U: What is 2+2?\nA: It is 4.<end>\n")
    with pytest.raises(PluginError, match=rf"template 'bad' in .*mine\.yaml is invalid: {expected}"):
        library.get("bad")


def test_broken_yaml_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("x:\n  user: [unclosed\n")
    with pytest.raises(PluginError, match=r"broken\.yaml is not valid YAML at line \d+"):
        TemplateLibrary(tmp_path).names()


def test_a_name_defined_twice_names_both_files(tmp_path):
    for file in ("a.yaml", "b.yaml"):
        (tmp_path / file).write_text("twice: {}\n")
    with pytest.raises(PluginError, match=r"'twice' is defined in both .*a\.yaml and .*b\.yaml"):
        TemplateLibrary(tmp_path).names()


def test_invalid_python_template_is_a_plugin_error():
    with pytest.raises(PluginError, match="template 'mine' is invalid: key 'assistant' is missing"):
        Template(
            name="mine", system="{{content}}", default_system="", user="{{content}}", stop_words=[], eos_ends_turn=False
        )


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "bot", "content": "hi"}], DataError),
        ([{"role": "user", "content": "q"}, {"role": "function_call", "content": "get_weather(Paris)"}], DataError),
        ([{"role": "user", "content": "q"}, {"role": "function_call", "content": '{"arguments": {}}'}], DataError),
    ],
)
def test_bad_messages_are_data_errors(tokenizer, manager, messages, expected):
    for name in ("chatml", "auto"):
        with pytest.raises(expected) as err:
            get_template(name, tokenizer, manager).render(messages)
        assert "message" in str(err.value) and "\n" not in str(err.value)


def test_bad_tool_definitions_are_data_errors(tokenizer, manager):
    with pytest.raises(DataError, match="not valid JSON"):
        get_template("qwen2", tokenizer, manager).render(CHAT, tools="[{oops")


def test_template_needs_a_tokenizer_for_its_special_tokens():
    with pytest.raises(PluginError, match="pass tokenizer="):
        PACKAGED.get("llama3").render(CHAT)
    assert PACKAGED.get("chatml").render_text(CHAT).startswith("<|im_start|>user\n")


# -- plugins ----------------------------------------------------------------------------------


def test_a_third_party_registers_templates_through_the_hook(tokenizer, tmp_path, monkeypatch):
    (tmp_path / "theirs.yaml").write_text(
        yaml.safe_dump(
            {
                "from-yaml": {
                    "system": "<sys>{{content}}</sys>",
                    "default_system": "Be kind.",
                    "user": "<q>{{content}}</q>",
                    "assistant": "<a>{{content}}</a>",
                    "stop_words": ["</a>"],
                    "eos_ends_turn": False,
                    "model_types": ["qwen2"],
                }
            }
        )
    )
    library = TemplateLibrary(tmp_path)

    class Plugin:
        @hookimpl
        def register_templates(self, register):
            register(
                "mytemplate",
                Template(
                    name="mytemplate",
                    system="[S]{{content}}",
                    default_system="",
                    user="[U]{{content}}",
                    assistant="[A]{{content}}{{eos_token}}",
                    stop_words=[],
                    eos_ends_turn=True,
                ),
            )
            library.register_all(register, f"{__name__}:THEIRS")

    monkeypatch.setattr(sys.modules[__name__], "THEIRS", library)
    manager = PluginManager(entry_points=False, use_env=False)
    record = manager.register_plugin(Plugin(), "my-templates", "factory-plugin-mine")
    assert record.error is None and record.provides["templates"] == ["mytemplate", "from-yaml"]
    mine = get_template("mytemplate", tokenizer, manager)
    assert mine.render_text(CHAT[:2]) == "[U]What is 2+2?[A]It is 4.<|im_end|>"
    theirs = get_template("from-yaml", tokenizer, manager)
    assert trained(theirs.render(CHAT)) == ["It is 4.</a>", "Six, of course.</a>"]
    assert theirs.render_text(CHAT[:1]) == "<sys>Be kind.</sys><q>What is 2+2?</q>"

    # A third party that declares a model type is preferred by auto over the core's template.
    assert template_for_model_type("qwen2", manager) == "from-yaml"
    assert template_for_model_type("qwen2", PluginManager(entry_points=False, use_env=False)) == "qwen2"


THEIRS: TemplateLibrary | None = None  # set by the test above, as a plugin module would


def test_registration_reads_yaml_but_builds_no_template_and_imports_nothing_heavy():
    probe = (
        "import sys\nfrom factory.plugins import PluginManager\n"
        "m = PluginManager(entry_points=False, use_env=False)\n"
        "from factory.data.template import PACKAGED\n"
        "print(len(m.names('templates')), len(PACKAGED._built),"
        " [x for x in ('torch', 'transformers', 'datasets') if x in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(PACKAGED.names()) + len(PACKAGED.aliases())), "0", "[]"]


@pytest.mark.parametrize("name", ["seed_oss", "minicpm5", "qwen3_coder", "glm4_5"])
def test_argument_values_that_are_not_text_round_trip(name):
    """Arguments a template writes as Python's str() (True, {'a': 1}) or JSON parse back to the same values."""
    from factory.infer.tools import extract_tool_calls

    template = PACKAGED.get(name)
    arguments = {"city": "Oslo", "days": 3, "metric": True, "ratio": 0.5, "hours": [9, 12], "filters": {"rain": False}}
    messages = [
        {"role": "user", "content": "Forecast?"},
        {"role": "function_call", "content": json.dumps({"name": "get_forecast", "arguments": arguments})},
    ]
    tokenizer = SimpleNamespace(bos_token="<s>", eos_token="</s>")
    answer = [s.text for s in template.render(messages, tokenizer=tokenizer) if s.trainable][-1]
    for marker in [*template.stop_words, "</s>"]:
        answer = answer.split(marker)[0]
    written = {"str": "True", "str_scalars": "True", "json": "true"}[template.tool_call_argument_value]
    assert written in answer
    assert extract_tool_calls(template, answer) == [("get_forecast", arguments)]
