"""Plain LoRA layers through the core's fused low-rank linear (``fused_ops``).

peft's ``Linear.forward`` runs the base layer, then the adapter as two matmuls, a scale and an add:
five autograd nodes and two extra passes over the output per layer, forward and backward. On
SmolLM2 those passes were ~6% of a LoRA step; :func:`factory.model.fused.low_rank_linear` folds them
into the base matmul. Any layer or call it does not model (DoRA and other variants, dropout, an
adapter bias, several or disabled adapters, merged weights, a trainable, quantized or partitioned
base, weights in another dtype than the input, as with ``frozen_weights: fp32``) keeps peft's own
forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from factory.model.fused import low_rank_linear


def _plain_adapter(layer: LoraLinear, x: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The one active plain-LoRA adapter this call can fuse, or None to let peft run it."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    base = layer.base_layer
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    plain = (
        name not in getattr(layer, "lora_variant", {})
        and not layer.use_dora.get(name, False)
        and isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and layer.lora_B[name].bias is None
    )
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    # Whole weights only: DeepSpeed ZeRO-3 leaves a partitioned weight empty until the layer's own forward.
    whole = base.weight.shape == (base.out_features, base.in_features) and layer.lora_A[name].weight.dim() == 2
    return name if plain and frozen and whole and x.dtype == base.weight.dtype == dtype else None


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _plain_adapter(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return low_rank_linear(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                           self.scaling[name])


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Route peft's LoRA layers over plain ``nn.Linear`` bases through the fused forward; returns how many."""
    patched = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
            module.forward = types.MethodType(_fused_forward, module)
            patched += 1
    return patched
