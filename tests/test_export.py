"""factory export: shards with an index, an Ollama Modelfile, an upload to a hub repository.

Oracles: transformers loads the shards; Go's own text/template (what Ollama renders prompts
with) runs the Modelfile's TEMPLATE, compared with the tokenizer's Jinja template through
transformers or factory's packaged template; huggingface_hub downloads the pushed repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hub_server import LoopbackHub

from factory.cli import main
from factory.config import load_config
from factory.data.template import get_template
from factory.errors import ConfigError
from factory.model.export import export_model
from factory.model.hub import fetch_model

GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Data struct {
	System   string
	Messages []Message
}

func main() {
	tmpl := template.Must(template.New("modelfile").Parse(os.Args[1]))
	var data Data
	if err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
		panic(err)
	}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
"""

CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?\nAnswer briefly."},
]


@pytest.fixture(scope="session")
def go_template(tmp_path_factory) -> Path:
    """A binary that executes a Go text/template over {System, Messages} read as JSON from stdin."""
    go = shutil.which("go")
    assert go, "the Ollama template test needs Go's text/template: apt-get install golang-go"
    folder = tmp_path_factory.mktemp("gotmpl")
    (folder / "main.go").write_text(GO_PROGRAM)
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath")}
    subprocess.run(
        [go, "build", "-o", str(folder / "gotmpl"), str(folder / "main.go")], check=True, env=env, cwd=folder
    )
    return folder / "gotmpl"


def _modelfile_template(text: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)


def _go_render(binary: Path, template: str, system: str, messages: list[dict]) -> str:
    data = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return subprocess.run(
        [str(binary), template], input=json.dumps(data), capture_output=True, text=True, check=True
    ).stdout


def _state(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").state_dict()


def test_shards_stay_under_the_limit_and_load_in_transformers(tiny_causal_lm, plugin_manager, tmp_path):
    import torch

    cfg = load_config(model=str(tiny_causal_lm), export_max_shard_size="150KB")
    out = export_model(cfg, plugin_manager, str(tmp_path / "out"))
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size <= 150_000 + 4096 for p in shards)  # the limit, plus each file's JSON header
    original, exported = _state(tiny_causal_lm), _state(out)
    assert original.keys() == exported.keys() and all(torch.equal(original[k], exported[k]) for k in original)


def test_the_export_group_and_the_shard_size_unit(tiny_causal_lm, plugin_manager, tmp_path):
    cfg = load_config(
        {"model": str(tiny_causal_lm), "export": {"dir": str(tmp_path / "grouped"), "max_shard_size": "1GiB"}}
    )
    assert cfg.export_max_shard_size == 2**30 and cfg.to_grouped()["export"]["dir"] == str(tmp_path / "grouped")
    out = export_model(cfg, plugin_manager)
    assert (out / "model.safetensors").is_file()  # one file: the model is far under the limit
    with pytest.raises(ConfigError, match="config key 'export_max_shard_size': must be a size such as 500MB"):
        load_config(export_max_shard_size="lots")


@pytest.mark.parametrize("template", ["auto", "chatml", "qwen2_5", "llama3"])
def test_the_modelfile_template_renders_what_the_chat_template_does(
    template, tiny_causal_lm, plugin_manager, tmp_path, go_template
):
    from transformers import AutoTokenizer

    cfg = load_config(model=str(tiny_causal_lm), template=template, export_ollama=True)
    out = export_model(cfg, plugin_manager, str(tmp_path / "out"))
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM .\n")
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    chat = get_template(template, tokenizer, plugin_manager)
    go = _modelfile_template(modelfile)
    for system in ("You are terse.", ""):
        if template == "auto":  # the tokenizer's Jinja, through transformers
            messages = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            expected = chat.render_text(CONVERSATION, system=system, add_generation_prompt=True)
        assert _go_render(go_template, go, system or chat.default_system, CONVERSATION) == expected, (template, system)
    for stop in chat.stop_words or [tokenizer.eos_token]:
        assert f"PARAMETER stop {json.dumps(stop)}" in modelfile
    assert ('SYSTEM """' in modelfile) is bool(chat.default_system)
    if chat.default_system:
        assert f'SYSTEM """{chat.default_system}"""' in modelfile


def test_a_template_ollama_cannot_express_is_refused(tiny_causal_lm, plugin_manager, tmp_path):
    cfg = load_config(model=str(tiny_causal_lm), template="llama2", export_ollama=True)
    with pytest.raises(ConfigError) as err:
        export_model(cfg, plugin_manager, str(tmp_path / "out"))
    assert str(err.value).startswith("export_ollama cannot write template 'llama2' as an Ollama template (")


def test_the_export_is_pushed_to_a_hub_repository(tiny_causal_lm, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_loopback")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with LoopbackHub(tmp_path / "served") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code = main(
            [
                "export",
                f"model={tiny_causal_lm}",
                f"output={tmp_path / 'out'}",
                "export.max_shard_size=150KB",
                "export.ollama=true",
                "export.hub_repo=acme/exported",
            ]
        )
        assert code == 0, capsys.readouterr().err
        local = {
            str(p.relative_to(tmp_path / "out")): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()
        }
        assert hub.files("acme/exported", hub.refs("acme/exported")["main"]) == local
        assert "Modelfile" in local and "model.safetensors.index.json" in local
        assert hub.requests[0].headers.get("authorization") == "Bearer hf_loopback"
        pulled = fetch_model("acme/exported")
    original, exported = _state(tiny_causal_lm), _state(pulled)
    assert all(torch.equal(original[k], exported[k]) for k in original)
    assert "uploaded to acme/exported" in capsys.readouterr().out
