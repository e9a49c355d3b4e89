"""NF4/FP4 weights of ``bnb.nn.Linear4bit`` dequantized in torch, bit for bit as bitsandbytes does.

Why not ``bitsandbytes.functional.dequantize_4bit``: on CPU it runs in bitsandbytes' own C library,
which is linked against the system's OpenMP runtime, while torch ships its own. In a training step
the two thread pools take turns on the same cores, and torch's threads, still spinning after each
matmul, starve bitsandbytes' ones: on the 2-vCPU machine one 1536 x 576 weight took 15-24 ms to
dequantize between matmuls against ~0.25 ms single-threaded, so a SmolLM2 step spent seconds there.
The same arithmetic as torch ops runs on torch's own pool (~0.6 ms for that weight), and the
tests check it gives exactly bitsandbytes' bits (NF4 and FP4, with and without double quantization).

The arithmetic, as bitsandbytes defines it: each byte holds two 4-bit codes (high nibble first),
each code indexes the 16-value table of its data type, and each block of ``blocksize`` values is
multiplied in fp32 by its absmax, then rounded to the weight's dtype. With double quantization the
absmax values are themselves 8-bit codes, dequantized the same way (blocks of 256) plus an offset.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from bitsandbytes.functional import QuantState
from bitsandbytes.nn import Linear4bit
from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

from factory.plugin_api import PluginError, attach_dequantizer


def _scale_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int, out: torch.Tensor) -> torch.Tensor:
    """``values`` (flat fp32) times each block's absmax, computed in fp32 and written rounded into ``out``."""
    count = values.numel()
    full = count - count % blocksize
    flat = out.view(-1)
    torch.mul(values[:full].view(-1, blocksize), absmax[: full // blocksize, None], out=flat[:full].view(-1, blocksize))
    if full < count:  # a last, shorter block
        torch.mul(values[full:], absmax[full // blocksize], out=flat[full:])
    return out


def _absmax(state: QuantState) -> torch.Tensor:
    """Each block's fp32 absmax; under double quantization, decoded from its 8-bit codes first."""
    if not state.nested:
        return state.absmax.float()
    inner = state.state2
    codes = inner.code.index_select(0, state.absmax.view(-1).int())
    decoded = _scale_blocks(codes, inner.absmax, inner.blocksize, torch.empty_like(codes))
    return decoded.add_(state.offset)


class FourBitWeight:
    """The dense weight of a ``Linear4bit`` (a :class:`factory.plugin_api.WeightSource`) in its compute dtype.

    It reads the layer's current weight and statistics at each call (nothing cached that could go
    stale), except the 256-entry table mapping a packed byte to its two code values, which depends
    only on the data type. The weight is decoded in the dtype it was quantized from and then cast to
    the compute dtype, as bitsandbytes' own matmul does.
    """

    def __init__(self, layer: Linear4bit) -> None:
        self.layer = layer
        self.dtype: torch.dtype = layer.compute_dtype or self._state().dtype
        code = self._state().code.float()
        byte = torch.arange(256, device=code.device)
        # Both values of a byte as one 8-byte entry: a single gather per byte instead of two per value.
        self.pairs = torch.stack([code[byte >> 4], code[byte & 15]], dim=1).view(torch.int64).view(-1)

    def _state(self) -> QuantState:
        fix_4bit_weight_quant_state_from_module(self.layer)
        return self.layer.weight.quant_state

    def __call__(self) -> torch.Tensor:
        state = self._state()
        if getattr(state, "packing_format_for_cpu", False):
            raise PluginError(
                "a bitsandbytes 4-bit layer was repacked for bitsandbytes' CPU inference kernel, whose layout "
                "factory cannot dequantize; load the model with quantization=bnb-4bit, which prevents the repacking"
            )
        packed = self.layer.weight.data.view(torch.uint8).view(-1)
        values = self.pairs.index_select(0, packed.int()).view(torch.float32)[: math.prod(state.shape)]
        dense = torch.empty(state.shape, dtype=state.dtype, device=packed.device)
        return _scale_blocks(values, _absmax(state), state.blocksize, dense).to(self.dtype)


def attach_dequantizers(model: Any) -> int:
    """Give every ``Linear4bit`` of ``model`` its :class:`FourBitWeight`; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, Linear4bit)]
    for layer in layers:
        attach_dequantizer(layer, FourBitWeight(layer))
    return len(layers)
