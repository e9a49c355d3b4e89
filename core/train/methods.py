"""Built-in fine-tuning methods: full and freeze tuning. Both save whole models in safetensors."""

from __future__ import annotations

from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError, did_you_mean


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder layers (the ModuleList as long as ``num_hidden_layers``)."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}; use method=full or lora")


class _WholeModel:
    """Methods whose output is a whole model: saving writes the model, merging is a no-op."""

    name = ""

    def save(self, model: Any, output_dir: str) -> None:
        model.save_pretrained(output_dir, safe_serialization=True)

    def load(self, model: Any, adapter_dir: str, cfg: RunConfig) -> Any:
        raise ConfigError(
            f"'{adapter_dir}' holds a whole model from method={self.name}, not an adapter; "
            f"load it with model={adapter_dir} and no adapter"
        )

    def merge(self, model: Any) -> Any:
        return model


class FullTuning(_WholeModel):
    """Train every parameter."""

    name = "full"
    trains_all_weights = True

    def apply(self, model: Any, cfg: RunConfig) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        return model


class FreezeTuning(_WholeModel):
    """Train the last (or first) N decoder layers, optionally only some of their sub-modules, plus extras."""

    name = "freeze"

    def apply(self, model: Any, cfg: RunConfig) -> Any:
        opts = cfg.options("freeze")
        layers = decoder_layers(model)
        if abs(opts.layers) > len(layers):
            raise ConfigError(
                f"freeze.layers={opts.layers} but the model has only {len(layers)} layers; "
                f"choose a value between -{len(layers)} and {len(layers)}"
            )
        chosen = list(layers)[-opts.layers :] if opts.layers > 0 else list(layers)[: -opts.layers]
        for param in model.parameters():
            param.requires_grad_(False)
        sub_names = {name.split(".")[0] for layer in chosen for name, _ in layer.named_children()}
        unknown = [m for m in opts.modules if m != "all" and m not in sub_names]
        if unknown:
            raise ConfigError(
                f"freeze.modules names '{unknown[0]}', which is not in the model's layers"
                f"{did_you_mean(unknown[0], sub_names)} (available: {', '.join(sorted(sub_names))})"
            )
        for layer in chosen:
            for name, param in layer.named_parameters():
                if "all" in opts.modules or name.split(".")[0] in opts.modules:
                    param.requires_grad_(True)
        modules = dict(model.named_modules())
        short = {name.rsplit(".", 1)[-1]: name for name in modules if name}
        for extra in opts.extra:
            full = extra if extra in modules else short.get(extra)
            if full is None:
                raise ConfigError(
                    f"freeze.extra names '{extra}', which is not a module of the model{did_you_mean(extra, short)}"
                )
            for param in modules[full].parameters():
                param.requires_grad_(True)
        return model
