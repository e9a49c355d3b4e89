"""Export: merge a trained adapter into its base and write a plain Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.model.loader import load_model
from factory.plugins import PluginManager


def export_model(cfg: RunConfig, manager: PluginManager, output: str, *, max_shard_size: str | int | None = None) -> Path:
    """Load ``cfg.model`` (+ ``cfg.adapter``), merge, and save to ``output`` for ``AutoModelForCausalLM``.

    ``max_shard_size`` (``"2GB"``, or bytes) splits the weights into files no larger than it
    (transformers' own default when None).
    """
    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise ConfigError(f"export folder '{out}' is not empty; choose another or pass overwrite_output_dir=true")
    if cfg.precision == "auto":
        cfg = cfg.model_copy(update={"precision": "fp32"})  # merge at full precision unless asked otherwise
    loaded = load_model(cfg, manager, train=False)
    model = loaded.model
    if loaded.quantizer is not None:
        loaded.quantizer.export(model, loaded.tokenizer, str(out), cfg)
        return out
    if loaded.adapter is not None and cfg.adapter:
        model = loaded.adapter.merge(model)
    out.mkdir(parents=True, exist_ok=True)
    shards = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(str(out), safe_serialization=True, **shards)
    loaded.tokenizer.save_pretrained(str(out))
    return out
