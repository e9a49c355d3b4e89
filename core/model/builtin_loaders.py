"""Built-in model loaders: Hugging Face folders and hub ids, GGUF files, packaged aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.model.aliases import ALIASES, resolve_alias
from factory.model.checkpoint import is_hub_id


def _from_pretrained(source: str, cfg: RunConfig, model_kwargs: dict[str, Any], **extra: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"trust_remote_code": cfg.trust_remote_code, **extra}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, **common, **model_kwargs)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(
                f"model '{source}' ships its own code; set trust_remote_code=true if you trust it"
            ) from None
        raise
    return model, tokenizer


class HuggingFaceLoader:
    """A local Hugging Face model folder, or a hub id (downloaded into the Hugging Face cache, see factory.model.hub)."""

    priority = 10  # after aliases and GGUF files: an alias name could be spelled like a hub id

    def can_load(self, source: str) -> bool:
        path = Path(source)
        if path.is_dir():
            return (path / "config.json").is_file()
        return is_hub_id(source)

    def load(self, source: str, cfg: RunConfig, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if Path(source).is_dir():
            return _from_pretrained(source, cfg, model_kwargs)
        from factory.model.hub import fetch_model

        return _from_pretrained(str(fetch_model(source, cfg.revision)), cfg, model_kwargs)


class GGUFLoader:
    """A GGUF file, dequantized by transformers into a regular model."""

    priority = 20

    def can_load(self, source: str) -> bool:
        return source.endswith(".gguf") and Path(source).is_file()

    def load(self, source: str, cfg: RunConfig, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
        path = Path(source)
        model, tokenizer = _from_pretrained(str(path.parent), cfg, model_kwargs, gguf_file=path.name)
        model.hf_quantizer = None  # dequantized weights: save and train like any other model
        model.config.__dict__.pop("quantization_config", None)
        return model, tokenizer


class AliasLoader:
    """Short names for models shipped inside Python packages (e.g. smollm2-135m-instruct)."""

    priority = 30

    def can_load(self, source: str) -> bool:
        return source in ALIASES

    def load(self, source: str, cfg: RunConfig, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return _from_pretrained(str(resolve_alias(source)), cfg, model_kwargs)
