"""The catalogue of bad inputs: every failure a user can cause is one sentence naming the bad value.

One table across the CLI, the Python API, the HTTP server and the job API. Each case asserts the
exit code or HTTP status, that the answer is one sentence (one line, no traceback) naming the
bad value, and that nothing was written half-way (no output folder, no file in the working
folder, no queued job).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from infer_helpers import ScriptedEngine

import factory
from factory.cli import main
from factory.config import load_config
from factory.errors import FactoryError
from factory.service.app import create_app

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO, CMMLU = SHARED / "llamafactory-demo", SHARED / "cmmlu"
KEY = "sk-catalogue"


def _not_installed_reporter() -> str:
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    return next(name for name in INTEGRATION_TO_CALLBACK if name not in get_available_reporting_integrations())


@dataclass
class Case:
    surface: str  # cli, python, server, job
    given: Any  # argv, a call, or a request body
    status: int  # exit code or HTTP status
    says: tuple[str, ...]  # fragments of the one sentence; the first names the bad value
    files: dict[str, Any] = field(default_factory=dict)  # files the case needs, under {tmp}
    env: dict[str, str] = field(default_factory=dict)  # environment variables the case sets


TINY = "model={tiny}"
RUN = ("dataset_dir={demo}", "output_dir={tmp}/out", "max_steps=1", "sample_prompt=null")

CASES: dict[str, Case] = {
    # -- the CLI: config keys and values ---------------------------------------------------------
    "unknown key": Case(
        "cli", ["finetune", "lerning_rate=1e-4", *RUN], 2, ("'lerning_rate'", "did you mean 'learning_rate'")
    ),
    "not a number": Case("cli", ["finetune", "batch_size=abc", *RUN], 2, ("'batch_size'", "'abc'")),
    "zero batch": Case("cli", ["finetune", "batch_size=0", *RUN], 2, ("'batch_size'", "greater than 0")),
    "huge seed": Case(
        "cli", ["finetune", "seed=1180591620717411303424", *RUN], 2, ("'seed'", "less than or equal to 4294967295")
    ),
    "negative seed": Case("cli", ["finetune", "seed=-5", *RUN], 2, ("'seed'",)),
    "zero steps": Case(
        "cli",
        ["finetune", "max_steps=0", "dataset_dir={demo}", "output_dir={tmp}/out"],
        2,
        ("'max_steps'", "-1 to train for num_epochs"),
    ),
    "negative lr": Case("cli", ["finetune", "learning_rate=-1", *RUN], 2, ("'learning_rate'",)),
    "nan lr": Case("cli", ["finetune", "learning_rate=.nan", *RUN], 2, ("'learning_rate'", "finite")),
    "warmup ratio": Case("cli", ["finetune", "warmup_ratio=1.5", *RUN], 2, ("'warmup_ratio'",)),
    "zero cutoff": Case("cli", ["finetune", "cutoff_len=0", *RUN], 2, ("'cutoff_len'",)),
    "precision": Case("cli", ["finetune", "precision=fp64", *RUN], 2, ("'precision'", "'fp64'")),
    "scheduler": Case(
        "cli", ["finetune", "lr_scheduler=cosinus", *RUN], 2, ("lr_scheduler 'cosinus'", "did you mean 'cosine'")
    ),
    "reporter typo": Case(
        "cli", ["finetune", "report_to=[wandbb]", *RUN], 2, ("report_to 'wandbb'", "did you mean 'wandb'")
    ),
    "reporter missing": Case(
        "cli", ["finetune", "report_to=[{reporter}]", *RUN], 2, ("report_to '{reporter}'", "pip install")
    ),
    "deepspeed file": Case(
        "cli", ["finetune", "deepspeed={tmp}/ds.json", *RUN], 2, ("deepspeed config '{tmp}/ds.json' does not exist",)
    ),
    "deepspeed json": Case(
        "cli",
        ["finetune", "deepspeed={tmp}/bad_ds.json", *RUN],
        2,
        ("deepspeed config '{tmp}/bad_ds.json' is not valid JSON",),
        {"bad_ds.json": "{zero_optimization:"},
    ),
    "deepspeed preset": Case(
        "cli",
        ["finetune", "deepspeed=zero4", *RUN],
        2,
        ("deepspeed config 'zero4' does not exist", "a preset (zero2, zero3)"),
    ),
    "fsdp on cpu": Case(
        "cli", ["finetune", "fsdp=full_shard", *RUN], 2, ("fsdp='full_shard' needs CUDA GPUs", "deepspeed=zero3")
    ),
    "override form": Case(
        "cli",
        ["finetune", "{tmp}/ok.yaml", "batch_size"],
        2,
        ("override 'batch_size'", "key=value"),
        {"ok.yaml": "batch_size: 2\n"},
    ),
    "plugin option range": Case("cli", ["finetune", "lora.rank=0", *RUN], 2, ("'lora.rank'",)),
    "plugin option typo": Case(
        "cli", ["finetune", "lora.rnak=8", *RUN], 2, ("'lora.rnak'", "did you mean 'lora.rank'")
    ),
    "section not a mapping": Case("cli", ["finetune", "lora=5", *RUN], 2, ("config key 'lora' must be a mapping",)),
    "unknown section": Case("cli", ["finetune", "nosuch.x=1", *RUN], 2, ("'nosuch'",)),
    "jobs key typo": Case(
        "cli", ["serve", "jobs.allow_dir=[/tmp]"], 2, ("'jobs.allow_dir'", "did you mean 'jobs.allow_dirs'")
    ),
    "api key scope": Case("cli", ["serve", "api_keys={{k: admin}}"], 2, ("'api_keys.k'", "'admin'")),
    "port": Case("cli", ["serve", "port=70000"], 2, ("'port'", "65535")),
    # -- config files ----------------------------------------------------------------------------
    "missing file": Case(
        "cli", ["finetune", "{tmp}/nothere.yaml"], 2, ("config file '{tmp}/nothere.yaml' does not exist",)
    ),
    "not utf-8": Case(
        "cli",
        ["finetune", "{tmp}/latin1.yaml"],
        2,
        ("config file '{tmp}/latin1.yaml' is not UTF-8", "byte 0xe9"),
        {"latin1.yaml": b"model: caf\xe9\n"},
    ),
    "bad yaml": Case(
        "cli",
        ["finetune", "{tmp}/bad.yaml"],
        2,
        ("config file '{tmp}/bad.yaml' is not valid YAML at line 3",),
        {"bad.yaml": "a: 1\nb: [1, 2\n"},
    ),
    "yaml list": Case(
        "cli",
        ["finetune", "{tmp}/list.yaml"],
        2,
        ("config file '{tmp}/list.yaml' must hold a mapping",),
        {"list.yaml": "- a\n- b\n"},
    ),
    # -- plugins and methods ---------------------------------------------------------------------
    "method": Case("cli", ["finetune", "method=loar", *RUN], 2, ("method 'loar'", "did you mean 'lora'")),
    "stage": Case("cli", ["finetune", "stage=sftt", *RUN], 2, ("stage 'sftt'", "did you mean 'sft'")),
    "optimizer": Case("cli", ["finetune", "optimizer=adamww", *RUN], 2, ("optimizer 'adamww'", "did you mean 'adamw'")),
    "template": Case("cli", ["finetune", "template=chatmll", *RUN], 2, ("template 'chatmll'", "did you mean 'chatml'")),
    "quantization": Case("cli", ["finetune", "quantization=bnb-5bit", *RUN], 2, ("quantization 'bnb-5bit'",)),
    "gpu patch": Case(
        "cli", ["finetune", "patches=[liger]", *RUN], 2, ("patch 'liger'", "cannot run here", "CUDA GPU")
    ),
    "gpu engine": Case(
        "cli", ["chat", "engine=vllm", "--prompt", "hi"], 2, ("engine 'vllm'", "cannot run here", "CUDA GPU")
    ),
    "loader": Case("cli", ["finetune", "loader=ggufx", *RUN], 2, ("loader 'ggufx'", "did you mean 'gguf'")),
    "disabled plugin": Case(
        "cli",
        ["finetune", "plugins.disable=[peft]", *RUN],
        2,
        ("method 'lora' comes from factory-plugin-peft", "disabled"),
    ),
    "plugin show": Case("cli", ["plugins", "show", "nosuchplugin"], 2, ("no plugin named 'nosuchplugin'",)),
    "bench against": Case("cli", ["bench", "lora", "against=axolotl"], 2, ("against=axolotl", "against=llamafactory")),
    "bench lf_env": Case(
        "cli",
        ["bench", "lora", "against=llamafactory", "lf_env={tmp}/nolf"],
        2,
        ("lf_env '{tmp}/nolf' has no bin/llamafactory-cli", "llamafactory-venv.sh"),
    ),
    "bench lf method": Case(
        "cli",
        ["bench", "galore", "against=llamafactory", "lf_env={tmp}/lf"],
        2,
        ("optimizer=galore", "optimizer=adamw"),
        {"lf/bin/llamafactory-cli": "#!/bin/sh\n"},
    ),
    # -- models and adapters ---------------------------------------------------------------------
    "missing model": Case("cli", ["finetune", "model={tmp}/nomodel", *RUN], 2, ("model '{tmp}/nomodel' is neither",)),
    "absolute non-path": Case("cli", ["finetune", "model=/nonexistent", *RUN], 2, ("model '/nonexistent' is neither",)),
    "offline hub id": Case(
        "cli",
        ["finetune", "model=someone/some-model", *RUN],
        2,
        ("model 'someone/some-model' is not in the local Hugging Face cache", "HF_HUB_OFFLINE is set"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}-hf"},
    ),
    "unreachable hub": Case(
        "cli",
        ["finetune", "model=someone/some-model", *RUN],
        2,
        ("model 'someone/some-model' is not in the local Hugging Face cache", "http://127.0.0.1:9 cannot be reached"),
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": "{tmp}-hf"},
    ),
    "revision of a folder": Case(
        "cli", ["finetune", TINY, "revision=v1", *RUN], 2, ("revision 'v1' pins a hub model", "drop revision=")
    ),
    "bad model config": Case(
        "cli",
        ["finetune", "model={tmp}/badmodel", *RUN],
        2,
        ("model config '{tmp}/badmodel/config.json' is not valid JSON",),
        {"badmodel/config.json": "{not json"},
    ),
    "missing adapter": Case(
        "cli", ["chat", TINY, "adapter={tmp}/noadapter", "--prompt", "hi"], 2, ("'{tmp}/noadapter'",)
    ),
    # -- data --------------------------------------------------------------------------------------
    "unknown data set": Case(
        "cli", ["finetune", TINY, "dataset=nosuchset", *RUN], 2, ("unknown data set 'nosuchset'",)
    ),
    "missing data file": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/none.json", *RUN],
        2,
        ("data set file '{tmp}/none.json' does not exist",),
    ),
    "missing dataset_dir": Case(
        "cli",
        ["finetune", TINY, "dataset=x", "dataset_dir={tmp}/nodir", "output_dir={tmp}/out"],
        2,
        ("dataset_dir '{tmp}/nodir' does not exist",),
    ),
    "empty file": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/empty.json", *RUN],
        2,
        ("data set file {tmp}/empty.json is empty",),
        {"empty.json": ""},
    ),
    "empty jsonl": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/empty.jsonl", *RUN],
        2,
        ("data set file {tmp}/empty.jsonl is empty",),
        {"empty.jsonl": "\n\n"},
    ),
    "empty list": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/list.json", *RUN],
        2,
        ("{tmp}/list.json holds an empty JSON list",),
        {"list.json": "[]"},
    ),
    "bad json line": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/bad.jsonl", *RUN],
        2,
        ("{tmp}/bad.jsonl line 2 is not valid JSON",),
        {"bad.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": \n'},
    ),
    "missing column": Case(
        "cli",
        ["finetune", TINY, "dataset=mine", "dataset_dir={tmp}", "output_dir={tmp}/out"],
        2,
        ("has no column 'instruction'", "did you mean"),
        {
            "rows.json": json.dumps([{"instructions": "a", "output": "b"}]),
            "dataset_info.json": json.dumps(
                {"mine": {"file_name": "rows.json", "columns": {"prompt": "instruction", "response": "output"}}}
            ),
        },
    ),
    "undetectable format": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/odd.json", *RUN],
        2,
        ("cannot tell the format of {tmp}/odd.json",),
        {"odd.json": json.dumps([{"a": 1, "b": 2}])},
    ),
    "empty answers": Case(
        "cli",
        ["finetune", TINY, "dataset={tmp}/noanswer.json", *RUN],
        2,
        ("none of the 2 rows", "its answer is empty"),
        {"noanswer.json": json.dumps([{"instruction": "a", "output": ""}, {"instruction": "b", "output": "  "}])},
    ),
    # -- outputs -----------------------------------------------------------------------------------
    "output is a file": Case(
        "cli",
        ["finetune", TINY, "dataset_dir={demo}", "output_dir={tmp}/afile"],
        2,
        ("output_dir '{tmp}/afile' is a file",),
        {"afile": "x"},
    ),
    "output under a file": Case(
        "cli",
        ["finetune", TINY, "dataset_dir={demo}", "output_dir={tmp}/afile/run"],
        2,
        ("output_dir '{tmp}/afile/run' lies under '{tmp}/afile'",),
        {"afile": "x"},
    ),
    "output busy": Case(
        "cli",
        ["finetune", TINY, "dataset_dir={demo}", "output_dir={tmp}/mine"],
        2,
        ("output_dir '{tmp}/mine' is not empty",),
        {"mine/notes.txt": "keep"},
    ),
    "overwrite foreign": Case(
        "cli",
        ["finetune", TINY, "dataset_dir={demo}", "output_dir={tmp}/mine", "overwrite_output_dir=true"],
        2,
        ("output_dir '{tmp}/mine' holds files factory did not write",),
        {"mine/notes.txt": "keep"},
    ),
    "resume nothing": Case(
        "cli",
        ["finetune", TINY, "dataset_dir={demo}", "output_dir={tmp}/mine", "resume=true"],
        2,
        ("resume=true but output_dir '{tmp}/mine' holds no complete checkpoint",),
        {"mine/.factory-output": "{}", "mine/x.txt": "x"},
    ),
    # -- other commands --------------------------------------------------------------------------
    "eval no task": Case("cli", ["eval", TINY], 2, ("no task given",)),
    "eval task typo": Case("cli", ["eval", TINY, "task=cmmlx"], 2, ("task 'cmmlx'", "did you mean 'cmmlu'")),
    "eval no task_dir": Case("cli", ["eval", TINY, "task=cmmlu"], 2, ("task=cmmlu needs task_dir=DIR",)),
    "eval subject": Case(
        "cli",
        ["eval", TINY, "task=cmmlu", f"task_dir={CMMLU}", "subjects=anatomyy"],
        2,
        ("'anatomyy'", "did you mean 'anatomy'"),
    ),
    "eval n_shot": Case("cli", ["eval", TINY, "task=cmmlu", "n_shot=5000"], 2, ("'n_shot'",)),
    "eval db driver": Case(
        "cli",
        ["eval", TINY, "task=cmmlu", f"task_dir={CMMLU}", "results_db=mysql://u@h/db"],
        2,
        ("results_db 'mysql://u@h/db'",),
    ),
    "compare ids": Case("cli", ["eval", "compare", "1"], 2, ("factory eval compare needs two run ids",)),
    "export output": Case("cli", ["export", TINY], 2, ("factory export needs output=DIR",)),
    # -- the Python API ----------------------------------------------------------------------------
    "python int config": Case("python", ("finetune", (12345,), {}), 2, ("not the int 12345",)),
    "python string overrides": Case(
        "python", ("finetune", (None, "batch_size=2"), {}), 2, ("not the single string 'batch_size=2'",)
    ),
    "python non-string override": Case("python", ("finetune", (None, [3]), {}), 2, ("override 3 is not a string",)),
    "python kwarg": Case(
        "python", ("finetune", (), {"batch_szie": 2}), 2, ("'batch_szie'", "did you mean 'batch_size'")
    ),
    "python section": Case("python", ("finetune", (), {"lora": 5}), 2, ("config key 'lora' must be a mapping",)),
    "python evaluate": Case("python", ("evaluate", (), {"task": "cmmlx"}), 2, ("task 'cmmlx'",)),
    # -- the HTTP server ---------------------------------------------------------------------------
    "http no key": Case("server", ({}, b'{"model": "m", "messages": ['), 401, ("API key",)),
    "http malformed": Case("server", (None, b'{"model": "m", "messages": ['), 400, ("not valid JSON",)),
    "http seed": Case("server", (None, {"seed": 2**70}), 400, ("'seed'", "9223372036854775807")),
    "http temperature": Case("server", (None, {"temperature": 5}), 400, ("'temperature'", "(got 5)")),
    "http no messages": Case("server", (None, {"messages": []}), 400, ("'messages'",)),
    "http wrong model": Case("server", (None, {"model": "gpt-4o"}), 404, ("'gpt-4o'",)),
    "http stop list": Case("server", (None, {"stop": ["s"] * 17}), 400, ("'stop'",)),
    # -- the job API -------------------------------------------------------------------------------
    "job trust_remote_code": Case(
        "job", {"task": "cmmlu", "trust_remote_code": True}, 400, ("job key 'trust_remote_code'",)
    ),
    "job results_db": Case("job", {"task": "cmmlu", "results_db": "/x/y.db"}, 400, ("job key 'results_db'",)),
    "job output_dir": Case("job", {"task": "cmmlu", "output_dir": "/x"}, 400, ("job key 'output_dir'",)),
    "job unknown key": Case("job", {"tsk": "cmmlu"}, 400, ("job key 'tsk'", "did you mean 'task'")),
    "job task": Case("job", {"task": "cmmlx"}, 400, ("task 'cmmlx'",)),
    "job task_dir": Case("job", {"task": "cmmlu", "task_dir": "/etc"}, 400, ("job task_dir '/etc' is outside",)),
    "job model": Case("job", {"task": "cmmlu", "model": "/models/other"}, 400, ("job model '/models/other'",)),
    "job seed": Case("job", {"task": "cmmlu", "seed": 2**70}, 400, ("'seed'",)),
    "job body": Case("job", [1, 2], 400, ("the job body must be a JSON object",)),
    # -- LLaMA-Factory YAMLs (factory.lf_compat) ------------------------------------------------
    "lf unknown key": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'lora_rnak'", "docs/migrating.md"),
        files={"lf.yaml": "model_name_or_path: x\nlora_rnak: 8\n"},
    ),
    "lf refused key": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'use_llama_pro: true'", "method: llama-pro"),
        files={"lf.yaml": "model_name_or_path: x\nfinetuning_type: freeze\nuse_llama_pro: true\n"},
    ),
    "lf refused value": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'quantization_bit: 3'", "use one of 4, 8"),
        files={"lf.yaml": "model_name_or_path: x\nquantization_bit: 3\n"},
    ),
    "lf two keys": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("'pissa_init' and 'loraplus_lr_ratio'", "keep one"),
        files={"lf.yaml": "model_name_or_path: x\npissa_init: true\nloraplus_lr_ratio: 16\n"},
    ),
    "lf remote data": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("'dataset_dir: REMOTE:a/b'", "local path"),
        files={"lf.yaml": "model_name_or_path: x\ndataset_dir: REMOTE:a/b\n"},
    ),
    "lf checkpoint": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("'resume_from_checkpoint: out/checkpoint-5'", "resume: true"),
        files={"lf.yaml": "model_name_or_path: x\nresume_from_checkpoint: out/checkpoint-5\n"},
    ),
    "lf convert refused": Case(
        "cli",
        ["convert", "lf.yaml", "-o", "{tmp}/out.yaml"],
        2,
        ("LLaMA-Factory key 'fp8: true'",),
        files={"lf.yaml": "model_name_or_path: x\nfp8: true\n"},
    ),
    "lf push to hub": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'push_to_hub: true'", "export_hub_repo"),
        files={"lf.yaml": "model_name_or_path: x\npush_to_hub: true\n"},
    ),
    "lf predict in finetune": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'do_predict: true'", "run factory predict lf.yaml"),
        files={"lf.yaml": "model_name_or_path: x\ndo_predict: true\neval_dataset: identity\n"},
    ),
    "lf kto ref_model": Case(
        "cli",
        ["finetune", "lf.yaml"],
        2,
        ("LLaMA-Factory key 'ref_model: m'", "stages kto and ppo", "stage dpo"),
        files={"lf.yaml": "model_name_or_path: x\nstage: kto\nref_model: m\n"},
    ),
}


def test_the_catalogue_is_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.fixture
def place(tmp_path, monkeypatch, tiny_causal_lm):
    monkeypatch.chdir(tmp_path)
    return {"tmp": str(tmp_path), "demo": str(DEMO), "tiny": str(tiny_causal_lm), "reporter": _not_installed_reporter()}


def _fill(value: Any, place: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**place)
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(item, place) for item in value)
    return value


def _write(files: dict[str, Any], root: Path) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_one_sentence(message: str, says: tuple[str, ...]) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for fragment in says:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, place, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    for key, value in case.env.items():
        monkeypatch.setenv(key, _fill(value, place))
    _write(case.files, tmp_path)
    client = (
        _client(tmp_path) if case.surface in ("server", "job") else None
    )  # a server opens its database as it starts
    before = _snapshot(tmp_path)
    says = _fill(case.says, place)
    if case.surface == "cli":
        code = main(_fill(case.given, place))
        err = capsys.readouterr().err.strip()
        assert code == case.status, err
        _assert_one_sentence(err.splitlines()[-1].removeprefix("error: "), says)
        assert err.splitlines()[-1].startswith("error: ")
    elif case.surface == "python":
        function, args, kwargs = case.given
        with pytest.raises(FactoryError) as info:
            getattr(factory, function)(*_fill(args, place), **{"output_dir": str(tmp_path / "out"), **kwargs})
        _assert_one_sentence(str(info.value), says)
    else:
        assert client is not None
        if case.surface == "server":
            headers, body = case.given
            headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
            if isinstance(body, dict):
                body = json.dumps(
                    {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], **body}
                ).encode()
            reply = client.post(
                "/v1/chat/completions", content=body, headers={**headers, "Content-Type": "application/json"}
            )
        else:
            reply = client.post("/v1/evals", json=case.given, headers={"Authorization": f"Bearer {KEY}"})
            assert client.get("/v1/evals", headers={"Authorization": f"Bearer {KEY}"}).json()["data"] == []
        assert reply.status_code == case.status, reply.text
        _assert_one_sentence(reply.json()["error"]["message"], says)
    assert _snapshot(tmp_path) == before, f"something was written: {_snapshot(tmp_path) - before}"


def _client(tmp_path: Path) -> TestClient:
    cfg = load_config(
        None, [f"api_key={KEY}", f"results_db={tmp_path / 'r.db'}", f"jobs.output_dir={tmp_path / 'jobs'}"]
    )
    return TestClient(create_app(ScriptedEngine(["ok"]), cfg))
