"""The model loader pipeline: loaders -> patches -> quantizers -> adapter, then precision.

Each step asks the plugin manager for the implementation the config names; this module only
fixes the order and the shared ``model_kwargs`` the steps hand each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.model.attention import register_varlen_sdpa
from factory.model.checkpoint import is_hub_id
from factory.model.facts import ModelFacts
from factory.model.fused import fuse_modules
from factory.model.precision import resolve_precision, torch_dtype
from factory.plugins import PluginManager

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    adapter: Any | None
    quantizer: Any | None
    compute_dtype: Any
    facts: ModelFacts = field(default_factory=ModelFacts)


def pick_loader(cfg: RunConfig, manager: PluginManager) -> Any:
    """The loader the config names, or under ``auto`` the first one (by ``priority``, then name) that understands the model source."""
    if cfg.revision is not None and not is_hub_id(cfg.model):
        raise ConfigError(
            f"revision '{cfg.revision}' pins a hub model, but model '{cfg.model}' is not a hub id (owner/name); "
            "drop revision= or name the hub repository in model="
        )
    if cfg.loader != "auto":
        return manager.load("loaders", cfg.loader)
    loaders = [
        (impl.name, impl.load()) for impl in manager.implementations("loaders") if impl.unavailable_reason() is None
    ]
    for _, loader in sorted(loaders, key=lambda entry: (-getattr(entry[1], "priority", 0), entry[0])):
        if loader.can_load(cfg.model):
            return loader
    raise ConfigError(
        f"model '{cfg.model}' is neither a model folder, a .gguf file, an alias nor a hub id (owner/name); "
        "point model= at a local Hugging Face folder or name a hub repository"
    )


def hub_kernels_off() -> dict[str, Any]:
    """``use_kernels=False`` where transformers has Hub kernels, so a loaded model keeps the forwards we give it.

    From transformers 5.25, with its ``kernels`` dependency installed, a model loads with Hub kernels
    on by default, and ``model.train()`` kernelizes it again. That replaces the layers' forwards,
    so factory's fused RMSNorm and SwiGLU and a patch plugin's kernels (Liger) silently stop running
    once training starts. It would also fetch kernels from the Hub at run time. A patch that wants
    Hub kernels can set ``use_kernels`` back in its ``before_load``.
    """
    import importlib.util

    return {"use_kernels": False} if importlib.util.find_spec("transformers.integrations.hub_kernels") else {}


def load_model(cfg: RunConfig, manager: PluginManager, *, train: bool) -> LoadedModel:
    """Load the model and tokenizer the config describes, ready to train (``train=True``) or to serve.

    For training the frozen weights stay in the compute precision while trainable parameters are
    kept in fp32 (master weights); the Trainer autocasts. Methods that train every weight
    (``trains_all_weights``) load in fp32 so no precision is lost before training starts, and
    ``frozen_weights: fp32`` keeps frozen weights in fp32 too (autocast only, slower on CPU).
    """
    import torch

    precision = resolve_precision(cfg.precision)
    compute_dtype = torch_dtype(precision)
    method = cfg.method if train else adapter_method(cfg.adapter, cfg.method) if cfg.adapter else None
    adapter = manager.load("adapters", method) if method else None
    full_weights = train and (getattr(adapter, "trains_all_weights", False) or cfg.frozen_weights == "fp32")
    load_dtype = torch.float32 if full_weights else compute_dtype

    model_kwargs: dict[str, Any] = {
        "dtype": load_dtype,
        "attn_implementation": cfg.attn_implementation,
        **hub_kernels_off(),
    }
    patches = [manager.load("patches", name) for name in cfg.patches]
    quantizer = manager.load("quantizers", cfg.quantization) if cfg.quantization else None
    facts = ModelFacts()
    for name, patch in zip(cfg.patches, patches):
        facts = facts.combine(patch.before_load(cfg, model_kwargs), name)
    if quantizer is not None:
        quantizer.before_load(cfg, model_kwargs)
    if train and model_kwargs["attn_implementation"] == "sdpa":
        # The same SDPA, split per example on padding-free batches (see factory.model.attention).
        model_kwargs["attn_implementation"] = register_varlen_sdpa()

    loader = pick_loader(cfg, manager)
    model, tokenizer = loader.load(cfg.model, cfg, model_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    for patch in patches:
        model = patch.after_load(model, cfg)
    if quantizer is not None:
        model = quantizer.after_load(model, cfg)
    _fit_embeddings(model, tokenizer)

    if train:
        if cfg.gradient_checkpointing:
            # transformers 5 renamed the switch; keep working with 4.x.
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.config.use_cache = False
        if cfg.fused_ops:  # the core's own kernels step aside for what a patch took over (Liger's, say)
            log.info("fused RMSNorm/SwiGLU forwards on %d modules", fuse_modules(model, skip=set(facts.replaces or ())))
        # check_adapter_continuation (run before loading) made sure the method can continue cfg.adapter.
        model = adapter.continue_from(model, cfg.adapter, cfg) if cfg.adapter else adapter.apply(model, cfg)
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        model.train()
    else:
        if cfg.adapter:
            model = adapter.load(model, cfg.adapter, cfg)
        model.eval()
    return LoadedModel(model, tokenizer, adapter, quantizer, compute_dtype, facts)


def check_quantized_checkpoint(cfg: RunConfig, manager: PluginManager) -> None:
    """Refuse to train a quantized checkpoint that no quantizer plugin prepares (``quantization`` unset).

    transformers would load its quantized layers anyway, but without the plugin's preparation
    (k-bit setup, the guards that keep a backward through the layers), which can train wrong silently.
    """
    from factory.model.quantized import checkpoint_quantization

    found = checkpoint_quantization(cfg)
    if found:
        installed = ", ".join(manager.names("quantizers")) or "none installed"
        raise ConfigError(
            f"model '{cfg.model}' is a {found}-quantized checkpoint but quantization is not set; set quantization= "
            f"to the quantizer that loads it ({installed}) so its plugin prepares the layers for training"
        )


def check_adapter_continuation(cfg: RunConfig, adapter: Any) -> None:
    """``adapter: DIR`` in a training run trains that saved adapter further: refuse a method that cannot."""
    if not hasattr(adapter, "continue_from"):
        raise ConfigError(
            f"method={cfg.method} cannot continue training the adapter '{cfg.adapter}'; drop adapter= to train "
            f"model={cfg.model} afresh, or merge the adapter first (factory export) and train the merged model"
        )
    trained_with = adapter_method(cfg.adapter, cfg.method)
    if trained_with != cfg.method:
        raise ConfigError(
            f"adapter '{cfg.adapter}' was trained with method={trained_with}, not method={cfg.method}; "
            f"set method={trained_with} to continue training it"
        )


def adapter_method(adapter_dir: str, default: str) -> str:
    """The method that trained ``adapter_dir``, read from the run's saved config (else ``default``)."""
    from pathlib import Path

    import yaml

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ConfigError(f"adapter '{adapter_dir}' is not a folder; give the output_dir of a training run")
    saved = folder / "factory_config.yaml"
    if saved.is_file():
        return (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("method", default)
    return default


def _fit_embeddings(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings when the tokenizer has tokens the model has no rows for (a template added them)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        log.info("resizing embeddings from %d to %d rows for added tokens", rows, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)


def supports_packed_positions(model: Any) -> bool:
    """Whether restarting position ids keep packed examples apart in this model.

    transformers' masking utilities (``create_causal_mask``) turn restarts into a block-diagonal
    mask when no attention mask is given; a model that builds its own mask would silently let
    packed examples attend to each other, so it must get padded batches instead.
    """
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and any(
        name in vars(module) for name in ("create_causal_mask", "create_sliding_window_causal_mask")
    )


def trainable_summary(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
