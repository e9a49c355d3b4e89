"""Export: merge a trained adapter into its base and write a plain Hugging Face model folder.

Then, as the config asks: shards of at most ``export_max_shard_size`` (with the index transformers
reads), an Ollama Modelfile (``export_ollama``), and an upload to a hub repository (``export_hub_repo``).
"""

from __future__ import annotations

from pathlib import Path

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.model.loader import load_model
from factory.plugins import PluginManager


def export_model(cfg: RunConfig, manager: PluginManager, output: str | None = None) -> Path:
    """Load ``cfg.model`` (+ ``cfg.adapter``), merge, and save to ``output`` (default ``cfg.export_dir``)."""
    output = output or cfg.export_dir
    if not output:
        raise ConfigError("factory export needs output=DIR (or export_dir), the folder to write the merged model to")
    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise ConfigError(f"export folder '{out}' is not empty; choose another or pass overwrite_output_dir=true")
    if cfg.precision == "auto":
        cfg = cfg.model_copy(update={"precision": "fp32"})  # merge at full precision unless asked otherwise
    loaded = load_model(cfg, manager, train=False)
    model = loaded.model
    if loaded.quantizer is not None:
        if cfg.export_max_shard_size:
            raise ConfigError(
                f"export_max_shard_size applies to plain weights; the {cfg.quantization} quantizer writes its own "
                "format, so drop export_max_shard_size or export without quantization"
            )
        loaded.quantizer.export(model, loaded.tokenizer, str(out), cfg)
    else:
        if loaded.adapter is not None and cfg.adapter:
            model = loaded.adapter.merge(model)
        out.mkdir(parents=True, exist_ok=True)
        extra = {"max_shard_size": cfg.export_max_shard_size} if cfg.export_max_shard_size else {}
        model.save_pretrained(str(out), safe_serialization=True, **extra)
        loaded.tokenizer.save_pretrained(str(out))
    if cfg.export_ollama:
        from factory.data.template import get_template
        from factory.model.ollama import write_modelfile

        template = get_template(cfg.template, loaded.tokenizer, manager)
        write_modelfile(out, template, loaded.tokenizer, system=cfg.system)
    if cfg.export_hub_repo:
        from factory.model.hub import push_folder

        push_folder(out, cfg.export_hub_repo, private=cfg.export_hub_private)
    return out
