"""Plain LoRA layers through the core's fused low-rank linear (``fused_ops``).

peft's ``Linear.forward`` runs the base layer, then the adapter as two matmuls, a scale and an add:
five autograd nodes and two extra passes over the output per layer, forward and backward. On
SmolLM2 those passes were ~6% of a LoRA step; :func:`factory.model.fused.low_rank_linear` folds them
into the base matmul. Any layer or call it does not model (DoRA and other variants, dropout, an
adapter bias, several or disabled adapters, merged weights, a trainable or partitioned base, a
quantized base without a dequantizer, weights in another dtype than the input, as with
``frozen_weights: fp32``) keeps peft's own forward.

LoRA over a quantized base (QLoRA) takes the same path when the quantizer attached a dequantizer to
the base layer (``factory.plugin_api.dequantizer_of``; the bitsandbytes plugin does for 4-bit): the
fused linear dequantizes the weight in its forward and again in its backward instead of the
backend's own layer and peft's separate adapter ops. This module never learns which backend it is.

The q/k/v layers of an attention block read the same input; their frozen weights are stacked into one
matrix (the layers' weights become views of it, so the model still holds one copy) and the first of
them to be called computes all three outputs in one matmul, handing the other two to the calls that
follow on the same tensor (1% of a LoRA step on SmolLM2). Quantized bases are not stacked: their
dense weights exist only inside each layer's own passes. A group whose layers are not called on the
same tensor (cross-attention) or no longer fit the stack (moved, merged, re-cast) computes layer by layer.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer

from factory.plugin_api import WeightSource, dequantizer_of, low_rank_linear, stacked_low_rank_linear

# Layers of one module that read the same input, as transformers' Llama-style attention names them.
SHARED_INPUT = ("q_proj", "k_proj", "v_proj")


def _base_weight(base: torch.nn.Module) -> torch.Tensor | WeightSource | None:
    """The frozen base's weight for the fused path: its tensor, the dequantizer of a quantized base, or None."""
    source = dequantizer_of(base)
    if source is not None:
        return source if _frozen(base) else None
    return base.weight if _frozen_whole(base) else None


def _plain_adapter(layer: LoraLayer, x: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> str | None:
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
    whole_a = layer.lora_A[name].weight.dim() == 2  # ZeRO-3 partitions the adapter too
    weight = _base_weight(base)
    return name if plain and weight is not None and whole_a and x.dtype == weight.dtype == dtype else None


def _frozen(base: torch.nn.Module) -> bool:
    return not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)


def _frozen_whole(base: torch.nn.Linear) -> bool:
    """A frozen base with its whole weight (DeepSpeed ZeRO-3 leaves a partitioned weight empty until the
    layer's own forward)."""
    return _frozen(base) and base.weight.shape == (base.out_features, base.in_features)


def _pointers(base: torch.nn.Linear) -> tuple[int, int | None]:
    """Where the base's weight and bias live: they stay views of a stack while these do not change."""
    return base.weight.data_ptr(), None if base.bias is None else base.bias.data_ptr()


class _SharedInput:
    """Sibling LoRA layers over one input, computed as one stacked layer (see the module's docstring)."""

    def __init__(self, layers: list[LoraLinear]) -> None:
        bases = [layer.base_layer for layer in layers]
        self.layers = layers
        self.weight = torch.cat([base.weight.detach() for base in bases])
        self.bias = None if bases[0].bias is None else torch.cat([base.bias.detach() for base in bases])
        self.sizes = [base.out_features for base in bases]
        start = 0
        for base, size in zip(bases, self.sizes):
            base.weight = torch.nn.Parameter(self.weight[start : start + size], requires_grad=False)
            if self.bias is not None:
                base.bias = torch.nn.Parameter(self.bias[start : start + size], requires_grad=False)
            start += size
        self.views = [_pointers(base) for base in bases]
        self.shared = True
        self.pending: dict[LoraLinear, tuple[torch.Tensor, torch.Tensor]] = {}

    def output(self, layer: LoraLinear, x: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
        """``layer(x)`` from the stacked layer, or None when this call must run layer by layer."""
        kept = self.pending.pop(layer, None)
        if kept is not None:
            if kept[0] is x:
                return kept[1]
            self.shared = False  # the layers read different inputs: stacking would compute twice
        if not self.shared:
            self.pending.clear()
            return None
        names = [_plain_adapter(member, x, args, kwargs) for member in self.layers]
        if None in names or not self._intact():
            self.pending.clear()
            return None
        adapters = [
            (member.lora_A[name].weight, member.lora_B[name].weight, member.scaling[name])
            for member, name in zip(self.layers, names)
        ]
        outputs = stacked_low_rank_linear(x, self.weight, self.bias, adapters).split(self.sizes, dim=-1)
        self.pending = {member: (x, out) for member, out in zip(self.layers, outputs) if member is not layer}
        return outputs[self.layers.index(layer)]

    def _intact(self) -> bool:
        """Whether every layer's frozen weight (and bias) is still the view of the stack it was made."""
        return [_pointers(member.base_layer) for member in self.layers] == self.views


def _fused_forward(self: LoraLayer, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    group: _SharedInput | None = self.__dict__.get("_shared_input")
    if group is not None:
        out = group.output(self, x, args, kwargs)
        if out is not None:
            return out
    name = _plain_adapter(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return low_rank_linear(
        x, _base_weight(base), base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    )


def _stackable(layers: list[Any]) -> bool:
    """Plain LoRA layers over frozen ``nn.Linear`` bases alike in input, dtype, device and bias."""
    if not all(type(layer) is LoraLinear and type(layer.base_layer) is torch.nn.Linear for layer in layers):
        return False
    bases = [layer.base_layer for layer in layers]
    first = bases[0]
    return all(
        base.in_features == first.in_features
        and base.weight.dtype == first.weight.dtype
        and base.weight.device == first.weight.device
        and (base.bias is None) == (first.bias is None)
        and _frozen_whole(base)
        for base in bases
    )


def _fusable(module: torch.nn.Module) -> bool:
    """A peft LoRA layer over a plain ``nn.Linear`` or over a quantized layer with a dequantizer."""
    if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
        return True
    return isinstance(module, LoraLayer) and dequantizer_of(module.get_base_layer()) is not None


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Route peft's LoRA layers over plain ``nn.Linear`` or dequantizable bases through the fused forward;
    returns how many.

    q/k/v layers that can be stacked (see the module's docstring) share one :class:`_SharedInput`.
    """
    patched = 0
    for module in list(model.modules()):
        siblings = [getattr(module, name, None) for name in SHARED_INPUT]
        if _stackable(siblings):
            group = _SharedInput(siblings)
            for layer in siblings:
                layer.__dict__["_shared_input"] = group
        if _fusable(module):
            module.forward = types.MethodType(_fused_forward, module)
            patched += 1
    return patched
