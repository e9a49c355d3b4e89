"""NF4/FP4 weights of ``bnb.nn.Linear4bit`` dequantized in torch, bit for bit as bitsandbytes does.

Why not ``bitsandbytes.functional.dequantize_4bit``: on CPU it runs in bitsandbytes' C library, whose
OpenMP runtime (the system's libgomp) is a second thread pool beside torch's own. On the shared 2-vCPU
machine a parallel region waits whenever one of its threads is not scheduled, and the two pools
take turns on the same cores: one 1536 x 576 NF4 weight took 14-16 ms (median) to dequantize with
two threads, and 12-16 ms more when interleaved with a matmul, against 0.16 ms single-threaded. torch's
own parallel ops stall the same way there (a 1M-element multiply: 8 ms on two threads, 0.1 ms on one),
so this decoder works in chunks just under torch's grain size, where every op runs on the calling
thread and opens no parallel region: 0.9-1.6 ms for that weight on the loaded machine, 0.9 ms on
one thread (the price against bitsandbytes on a quiet machine). The tests check it gives exactly
bitsandbytes' bits (NF4 and FP4, with and without double quantization).

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

# torch runs an elementwise op on the calling thread below 32768 elements (``at::internal::GRAIN_SIZE``):
# work is cut into chunks just under it (see the module's docstring for why).
_SERIAL = 32767


def _scale_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int, out: torch.Tensor) -> torch.Tensor:
    """``values`` (flat fp32) times each block's absmax, in fp32, written rounded into ``out`` (flat)."""
    step = _SERIAL // blocksize * blocksize
    for start in range(0, values.numel(), step):
        part = values[start : start + step]
        full = part.numel() - part.numel() % blocksize
        first = start // blocksize
        torch.mul(
            part[:full].view(-1, blocksize),
            absmax[first : first + full // blocksize, None],
            out=out[start : start + full].view(-1, blocksize),
        )
        if full < part.numel():  # a last, shorter block
            torch.mul(part[full:], absmax[first + full // blocksize], out=out[start + full : start + part.numel()])
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
        state = self._state()
        self.dtype: torch.dtype = layer.compute_dtype or state.dtype
        code = state.code.float()
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
        absmax, blocksize, count = _absmax(state), state.blocksize, math.prod(state.shape)
        dense = torch.empty(count, dtype=state.dtype, device=packed.device)
        step = _SERIAL // blocksize * blocksize  # values per chunk: whole blocks, an even number
        index = torch.empty(step // 2, dtype=torch.int32, device=packed.device)
        pairs = torch.empty(step // 2, dtype=torch.int64, device=packed.device)
        for start in range(0, count, step):
            end = min(start + step, count)
            chunk = packed[start // 2 : (end + 1) // 2]
            index_ = index[: chunk.numel()].copy_(chunk)
            values = torch.index_select(self.pairs, 0, index_, out=pairs[: chunk.numel()]).view(torch.float32)
            _scale_blocks(values[: end - start], absmax[start // blocksize :], blocksize, dense[start:end])
        return dense.view(state.shape).to(self.dtype)


def attach_dequantizers(model: Any) -> int:
    """Give every ``Linear4bit`` of ``model`` its :class:`FourBitWeight`; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, Linear4bit)]
    for layer in layers:
        attach_dequantizer(layer, FourBitWeight(layer))
    return len(layers)
