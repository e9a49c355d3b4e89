"""Hub model ids download through huggingface_hub from a loopback hub (``HF_ENDPOINT``), never the internet.

The oracle for what loads is plain transformers reading the folder that was served.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import LoopbackHub

from factory.config import load_config
from factory.errors import ConfigError
from factory.model.hub import fetch_model
from factory.model.loader import load_model
from factory.testing import build_tiny_causal_lm

REPO = "acme/tiny-chat"


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """A model of the same shape as ``tiny_causal_lm`` with other weights: a later commit."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-2"), seed=1)


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    """A ~19 MB model: past huggingface_hub's 10 MiB download chunk, so a dropped connection leaves a partial file."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("large-lm"), hidden=512)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with LoopbackHub(tmp_path / "served") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.create(REPO)
        yield server


def _weights(model) -> dict:
    return {name: tensor.detach().float() for name, tensor in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _reference(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return _weights(AutoModelForCausalLM.from_pretrained(folder, dtype="float32"))


def test_a_hub_id_downloads_into_hf_home_and_loads_as_served(hub, tiny_causal_lm, plugin_manager, tmp_path):
    sha = hub.commit(REPO, tiny_causal_lm)
    loaded = load_model(load_config(model=REPO, precision="fp32"), plugin_manager, train=False)
    snapshot = tmp_path / "hf-home" / "hub" / "models--acme--tiny-chat" / "snapshots" / sha
    assert (snapshot / "model.safetensors").is_file()
    assert _same(_weights(loaded.model), _reference(tiny_causal_lm))
    assert loaded.tokenizer.chat_template == (tiny_causal_lm / "chat_template.jinja").read_text()


def test_revision_pins_the_commit_that_loads(hub, tiny_causal_lm, second_model, plugin_manager):
    first = hub.commit(REPO, tiny_causal_lm)
    hub.commit(REPO, second_model)  # main moves on
    hub.commit(REPO, tiny_causal_lm, branch="stable")
    for revision, expected in ((first, tiny_causal_lm), (None, second_model), ("stable", tiny_causal_lm)):
        cfg = load_config(model=REPO, revision=revision, precision="fp32")
        assert _same(_weights(load_model(cfg, plugin_manager, train=False).model), _reference(expected)), revision
    assert not _same(_reference(tiny_causal_lm), _reference(second_model))


def test_a_dropped_connection_resumes_the_partial_file(hub, large_model):
    hub.commit(REPO, large_model)
    hub.cut_after("model.safetensors", 11 * 2**20)
    folder = fetch_model(REPO)
    gets = hub.downloads("model.safetensors")
    assert [r.headers.get("Range") for r in gets] == [None, f"bytes={10 * 2**20}-"]  # the second asks for the rest only
    assert (folder / "model.safetensors").read_bytes() == (large_model / "model.safetensors").read_bytes()


def test_an_interrupted_download_continues_with_the_missing_files_only(hub, tiny_causal_lm):
    hub.commit(REPO, tiny_causal_lm)
    hub.fail_next("model.safetensors", 500)
    with pytest.raises(ConfigError) as err:
        fetch_model(REPO)
    assert f"downloading model '{REPO}' from {hub.url} failed" in str(err.value) and "run again" in str(err.value)
    folder = fetch_model(REPO)
    assert len(hub.downloads("config.json")) == 1 and len(hub.downloads("model.safetensors")) == 2
    assert (folder / "model.safetensors").read_bytes() == (tiny_causal_lm / "model.safetensors").read_bytes()


def test_offline_loads_from_the_cache_without_a_request(hub, tiny_causal_lm, second_model, plugin_manager, monkeypatch):
    first = hub.commit(REPO, tiny_causal_lm)
    hub.commit(REPO, second_model)
    fetch_model(REPO, first)
    fetch_model(REPO)
    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pinned = load_model(load_config(model=REPO, revision=first, precision="fp32"), plugin_manager, train=False)
    latest = load_model(load_config(model=REPO, precision="fp32"), plugin_manager, train=False)
    assert _same(_weights(pinned.model), _reference(tiny_causal_lm))
    assert _same(_weights(latest.model), _reference(second_model))
    assert len(hub.requests) == before


def test_offline_with_nothing_cached_is_one_sentence(hub, tiny_causal_lm, monkeypatch, tmp_path):
    hub.commit(REPO, tiny_causal_lm)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        fetch_model(REPO)
    assert str(err.value) == (
        f"model '{REPO}' is not in the local Hugging Face cache ({tmp_path / 'hf-home' / 'hub'}) and HF_HUB_OFFLINE is "
        "set; unset HF_HUB_OFFLINE to download it, or point model= at a local folder"
    )
    assert hub.requests == []


@pytest.mark.parametrize(
    ("repo", "revision", "says"),
    [
        ("acme/nothing-here", None, "model 'acme/nothing-here' is not a repository on"),
        (REPO, "v9", "revision 'v9' does not exist in model 'acme/tiny-chat'"),
    ],
)
def test_unknown_repository_or_revision_is_one_sentence(hub, tiny_causal_lm, repo, revision, says):
    hub.commit(REPO, tiny_causal_lm)
    with pytest.raises(ConfigError) as err:
        fetch_model(repo, revision)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_an_unreachable_endpoint_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(ConfigError) as err:
        fetch_model(REPO)
    message = str(err.value)
    assert (
        message.startswith(f"model '{REPO}' is not in the local Hugging Face cache")
        and "http://127.0.0.1:9 cannot be reached" in message
    )
    assert "\n" not in message


def test_revision_needs_a_hub_id(tiny_causal_lm, plugin_manager):
    with pytest.raises(ConfigError, match=r"revision 'v1' pins a hub model, but model '.*' is not a hub id"):
        load_model(load_config(model=str(tiny_causal_lm), revision="v1"), plugin_manager, train=False)


def test_the_cli_downloads_with_a_progress_bar(hub, tiny_causal_lm, tmp_path):
    """The environment as a user sets it (HF_ENDPOINT, HF_HOME), read by a fresh process running factory chat."""
    hub.commit(REPO, tiny_causal_lm)
    hub.cut_after("tokenizer.json", 100)  # a retry the quiet default keeps to itself
    env = {**os.environ, "TQDM_POSITION": "-1"}  # tqdm draws bars on a pipe too, as on a terminal
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "chat", f"model={REPO}", "max_new_tokens=2", "--prompt", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"factory: downloading {REPO} from {hub.url}" in proc.stderr
    assert "Fetching 6 files" in proc.stderr and "100%" in proc.stderr, proc.stderr
    assert "resume" not in proc.stderr and "warning" not in proc.stderr.lower(), proc.stderr
    assert len(hub.downloads("tokenizer.json")) == 2
    assert list((tmp_path / "hf-home" / "hub" / "models--acme--tiny-chat" / "snapshots").iterdir())
