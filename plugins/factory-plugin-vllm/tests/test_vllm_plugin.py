"""factory-plugin-vllm on a CPU without vLLM: the contract, the config mapping, and the engine class
against a stand-in ``vllm`` module (vLLM itself needs a CUDA GPU)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from factory_plugin_vllm.wiring import ServePlan, engine_args, sampling_args, serve_plan

import factory
from factory.errors import ConfigError, PluginError
from factory.infer.base import GenerationRequest, load_engine
from factory.testing import check_plugin_contract


def config(*overrides: str) -> factory.RunConfig:
    return factory.load_config(None, list(overrides))


def test_contract_and_listed_as_gpu_only():
    rows = check_plugin_contract("factory-plugin-vllm")
    impl = rows[0]["implementations"][0]
    assert (impl["kind"], impl["name"], impl["section"]) == ("engines", "vllm", "vllm")
    assert "vllm>=0.6" in impl["requires"] and "cuda (compute capability >= 7.0)" in impl["requires"]
    assert not impl["available"] and ("vllm" in impl["reason"] or "CUDA" in impl["reason"])


def test_choosing_vllm_here_fails_with_one_sentence():
    with pytest.raises(PluginError) as info:
        load_engine(config("engine=vllm"))
    message = str(info.value)
    assert message.startswith("engine 'vllm' from factory-plugin-vllm cannot run here")
    assert "\n" not in message


def test_options_are_validated():
    with pytest.raises(ConfigError, match="vllm.gpu_memory_utilization"):
        config("vllm.gpu_memory_utilization=1.5")
    with pytest.raises(ConfigError, match="vllm.tensor_paralel_size"):
        config("vllm.tensor_paralel_size=2")


def test_engine_args_map_the_config():
    cfg = config("model=/models/base")
    plan = ServePlan("/models/base", "/models/base")
    assert engine_args(cfg, cfg.options("vllm"), plan) == {
        "model": "/models/base",
        "tokenizer": "/models/base",
        "dtype": "auto",
        "trust_remote_code": False,
        "seed": 42,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "enforce_eager": False,
    }
    cfg = config(
        "precision=bf16",
        "seed=3",
        "max_batch_size=32",
        "trust_remote_code=true",
        "vllm.max_model_len=4096",
        "vllm.tensor_parallel_size=2",
        "vllm.max_lora_rank=16",
    )
    args = engine_args(cfg, cfg.options("vllm"), ServePlan("/m", "/m", lora="/a"))
    assert (args["dtype"], args["seed"], args["max_num_seqs"], args["trust_remote_code"]) == ("bfloat16", 3, 32, True)
    assert (args["max_model_len"], args["tensor_parallel_size"]) == (4096, 2)
    assert (args["enable_lora"], args["max_lora_rank"], args["max_loras"]) == (True, 16, 1)


def test_sampling_args_map_a_request():
    greedy = GenerationRequest(
        messages=[{"role": "user", "content": "hi"}], max_new_tokens=50, top_p=0.5, stop=("END",)
    )
    assert sampling_args(greedy, [7], ("<|end|>",), 40) == {
        "n": 1,
        "max_tokens": 40,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop": ["END", "<|end|>"],
        "stop_token_ids": [7],
        "skip_special_tokens": True,
    }
    sampled = GenerationRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.7, top_p=0.9, seed=5)
    args = sampling_args(sampled, [], (), 256)
    assert (args["temperature"], args["top_p"], args["seed"], args["stop"]) == (0.7, 0.9, 5, [])


def test_serve_plan_for_aliases_adapters_and_full_models(tmp_path):
    plan = serve_plan(config("model=smollm2-135m-instruct"))  # an alias: vLLM gets the converted folder
    assert plan.model == plan.tokenizer and (Path(plan.model) / "config.json").is_file() and plan.lora is None

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    assert serve_plan(config("model=/m", f"adapter={lora}")) == ServePlan("/m", "/m", str(lora))

    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert serve_plan(config("model=/m", f"adapter={full}")) == ServePlan(str(full), "/m")

    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(PluginError, match="is a DoRA adapter and vLLM serves plain LoRA only; merge it"):
        serve_plan(config("model=/m", f"adapter={dora}"))
    with pytest.raises(ConfigError, match="neither a LoRA adapter"):
        serve_plan(config("model=/m", f"adapter={tmp_path}"))
    with pytest.raises(ConfigError, match="quantization=bnb-4bit"):
        serve_plan(config("model=/m", "quantization=bnb-4bit"))


# -- the engine class against a stand-in vllm --------------------------------------------------


class FakeAsyncEngine:
    """Streams a fixed answer as vLLM does (cumulative outputs), slowly enough to be cancelled."""

    answer = "Hello from a stand-in vLLM that streams one word at a time, slowly."

    def __init__(self, args) -> None:
        self.args = args.kwargs
        self.calls: list[tuple] = []
        self.aborted: list[str] = []

    async def get_model_config(self):
        return SimpleNamespace(max_model_len=512)

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.calls.append((prompt, params.kwargs, request_id, lora_request))
        words = self.answer.split(" ")
        limit = params.kwargs["max_tokens"]
        for count in range(1, min(len(words), limit) + 1):
            await asyncio.sleep(0.03)
            if request_id in self.aborted:
                return
            done = count == len(words) or count == limit
            reason = ("stop" if count == len(words) else "length") if done else None
            text = " ".join(words[:count]) + ("" if done else " ")
            yield SimpleNamespace(
                finished=done, outputs=[SimpleNamespace(text=text, token_ids=list(range(count)), finish_reason=reason)]
            )

    async def abort(self, request_id):
        self.aborted.append(request_id)


@pytest.fixture
def fake_vllm(monkeypatch):
    class Recorded:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    vllm = ModuleType("vllm")
    vllm.AsyncEngineArgs = Recorded
    vllm.SamplingParams = Recorded
    vllm.AsyncLLMEngine = SimpleNamespace(from_engine_args=FakeAsyncEngine)
    request_module = ModuleType("vllm.lora.request")
    request_module.LoRARequest = lambda name, number, path: (name, number, path)
    for name, module in {
        "vllm": vllm,
        "vllm.lora": ModuleType("vllm.lora"),
        "vllm.lora.request": request_module,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_engine_streams_and_aborts_through_vllm(fake_vllm, tiny_causal_lm):
    from factory_plugin_vllm.engine import VLLMEngine

    cfg = config(f"model={tiny_causal_lm}", "max_new_tokens=20")
    engine = VLLMEngine(cfg, cfg.manager())
    try:
        assert engine.context_length == 512
        assert engine._engine.args["model"] == str(tiny_causal_lm)
        messages = [{"role": "user", "content": "Who are you?"}]
        stream = engine.stream(GenerationRequest.from_config(cfg, messages))
        deltas = list(stream)
        words = len(FakeAsyncEngine.answer.split())
        assert "".join(deltas) == stream.result.text == FakeAsyncEngine.answer and len(deltas) == words
        assert stream.result.finish_reason == "stop" and stream.result.completion_tokens == words
        prompt, params, _, lora = engine._engine.calls[-1]
        expected = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        assert prompt == {"prompt_token_ids": expected["input_ids"]} and lora is None
        assert params["max_tokens"] == 20 and params["temperature"] == 0.0

        short = engine.generate([GenerationRequest.from_config(cfg, messages, max_new_tokens=2)])[0]
        assert (short.text, short.finish_reason) == ("Hello from", "length")

        slow = engine.stream(GenerationRequest.from_config(cfg, messages))
        next(slow)
        slow.close()
        list(slow)
        assert slow.result.finish_reason == "cancelled"
        deadline = time.monotonic() + 5
        while engine._engine.calls[-1][2] not in engine._engine.aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._engine.calls[-1][2] in engine._engine.aborted
        assert engine.stats()["cancelled"] == 1 and engine.stats()["running"] == 0
    finally:
        engine.close()
