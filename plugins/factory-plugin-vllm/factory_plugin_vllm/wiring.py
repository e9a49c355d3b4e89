"""How a factory config becomes vLLM's arguments: pure functions, testable without vLLM or a GPU.

``engine_args`` gives the keyword arguments of ``vllm.AsyncEngineArgs`` (the same names as
``vllm.LLM``), ``sampling_args`` those of ``vllm.SamplingParams`` for one request, and
``serve_plan`` decides what vLLM loads for ``model`` + ``adapter``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.plugin_api import ALIASES, ConfigError, GenerationRequest, PluginError, RunConfig, resolve_alias
from factory_plugin_vllm.options import VLLMOptions

DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class ServePlan:
    """What vLLM loads: the model folder (or hub id), its tokenizer, and a LoRA adapter served on top."""

    model: str
    tokenizer: str
    lora: str | None = None


def model_source(model: str) -> str:
    """``model`` as vLLM can load it: aliases resolve to the converted Hugging Face folder."""
    return str(resolve_alias(model)) if model in ALIASES else model


def serve_plan(cfg: RunConfig) -> ServePlan:
    """The model and adapter vLLM serves for ``cfg``; refuses what vLLM cannot serve, in one sentence.

    A LoRA adapter (``adapter_config.json``) is served on top of the base; a full or freeze
    training output (``config.json``, a whole model) replaces the base, with the base's tokenizer.
    """
    if cfg.quantization:
        raise ConfigError(
            f"quantization={cfg.quantization} is a transformers-engine setting; vLLM reads a checkpoint's own "
            "quantization (GPTQ/AWQ folders), so remove quantization or use engine=transformers"
        )
    if cfg.patches:
        raise ConfigError(
            f"patches {cfg.patches} change transformers models and do not apply to vLLM; remove them or use engine=transformers"
        )
    base = model_source(cfg.model)
    if not cfg.adapter:
        return ServePlan(base, base)
    folder = Path(cfg.adapter)
    peft_config = folder / "adapter_config.json"
    if peft_config.is_file():
        data = json.loads(peft_config.read_text(encoding="utf-8"))
        kind = "DoRA" if data.get("use_dora") else str(data.get("peft_type", "unknown"))
        if kind != "LORA":
            raise PluginError(
                f"adapter '{cfg.adapter}' is a {kind} adapter and vLLM serves plain LoRA only; merge it with "
                f"factory export adapter={cfg.adapter} output=DIR and serve model=DIR"
            )
        return ServePlan(base, base, str(folder))
    if (folder / "config.json").is_file():
        return ServePlan(str(folder), base)
    raise ConfigError(
        f"adapter '{cfg.adapter}' holds neither a LoRA adapter (adapter_config.json) nor a whole model (config.json); "
        "give the output_dir of a training run"
    )


def engine_args(cfg: RunConfig, options: VLLMOptions, plan: ServePlan) -> dict[str, Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs`` / ``vllm.LLM``.

    ``max_batch_size`` maps to ``max_num_seqs`` only when the config sets it: vLLM's own default
    suits its continuous batching better than the transformers engine's default of 8.
    """
    args: dict[str, Any] = {
        "model": plan.model,
        "tokenizer": plan.tokenizer,
        "dtype": DTYPES[cfg.precision],
        "trust_remote_code": cfg.trust_remote_code,
        "seed": cfg.seed,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enforce_eager": options.enforce_eager,
    }
    if options.max_model_len is not None:
        args["max_model_len"] = options.max_model_len
    if "max_batch_size" in cfg.model_fields_set:
        args["max_num_seqs"] = cfg.max_batch_size
    if plan.lora:
        args.update(enable_lora=True, max_lora_rank=options.max_lora_rank, max_loras=1)
    return args


def sampling_args(
    request: GenerationRequest, stop_token_ids: list[int], stop_strings: tuple[str, ...], max_tokens: int
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams``: one completion of at most ``max_tokens``.

    The template's stop words end the answer as tokens (when they are one token) or strings;
    vLLM itself stops at the model's eos. Temperature 0 is greedy in vLLM as in factory.
    """
    return {
        "n": 1,
        "max_tokens": max_tokens,
        "temperature": request.temperature,
        "top_p": 1.0 if request.greedy else request.top_p,
        "seed": request.seed,
        "stop": [*request.stop, *stop_strings],
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": True,
    }
