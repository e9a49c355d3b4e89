"""RMSNorm and SwiGLU as autograd functions that keep fewer activations for the backward pass.

Written out op by op, a Llama-style RMSNorm keeps an fp32 copy of its input for backward and a
SwiGLU MLP keeps the gate, its SiLU and the up projection. Here the norm keeps its input in the
model's dtype plus one fp32 scale per token, and the MLP keeps gate and up and recomputes the SiLU:
on SmolLM2 that is about a quarter of a LoRA step's activation memory. Liger-Kernel fuses these
the same way, but as Triton kernels for GPUs only, hence this pure-PyTorch version.

A module is patched only when its forward computes exactly what the fused one does: each class
is checked once on a probe input (so Gemma's ``1 + weight`` norm or a GELU MLP keep their own).

:func:`low_rank_linear` is the same idea for a frozen linear layer plus a low-rank adapter (LoRA):
one autograd node instead of five, the adapter's product added inside the base matmul (``addmm``)
rather than as separate scale and add passes over the output, forward and backward. Adapter
plugins route their layers through it (factory-plugin-peft does for plain LoRA). Its frozen weight
may be a :class:`WeightSource` (a quantized layer's dequantizer, QLoRA): called in the forward and
again in the backward, never saved for backward, so no dense copy of any layer's weight stays alive
from its forward to its backward (holding all of them would cost the memory quantization saves).
"""

from __future__ import annotations

import types
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class _RMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x^2) + eps))`` with the statistics in fp32, as Llama computes it.

    Each step after the first works in place on a temporary: the same roundings as the op-by-op
    version, half its time (a pass over fp32 activations costs as much as the arithmetic here).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.float32, copy=True)  # a copy even in fp32: it is scaled in place
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return xf.mul_(rstd).to(x.dtype).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(torch.float32, copy=True).mul_(rstd)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).float()
            # rstd * (g - normed * mean(g * normed)), the mean as one dot product per row
            mean = torch.linalg.vecdot(grad_normed, normed).unsqueeze_(-1).div_(normed.shape[-1])
            grad_x = grad_normed.sub_(normed.mul_(mean)).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) * up``, keeping gate and up and recomputing the SiLU in backward."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        # The kernels autograd would run on the unfused graph, so the gradients are the same bits.
        gate, up = ctx.saved_tensors
        # In place where a temporary allows: fewer fresh activation-sized buffers, the same roundings.
        grad_gate = grad * up
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_gate, F.silu(gate).mul_(grad)


class WeightSource(Protocol):
    """A frozen weight kept in another form (quantized): calling it returns the dense weight in ``dtype``."""

    dtype: torch.dtype

    def __call__(self) -> torch.Tensor: ...


class _LowRankLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` plus, for each adapter ``i``, ``scaling_i * (x @ a_i.T) @ b_i.T`` added into
    its own block of output columns; ``weight``/``bias`` frozen, computed in ``x``'s dtype.

    Several adapters at once are layers that share an input (q/k/v) with their frozen weights stacked
    into one matrix: one matmul for the base and one for the adapters' ``a``, forward and backward.
    ``weight`` may be a :class:`WeightSource`: the dense weight then exists only inside each pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | WeightSource,
        bias: torch.Tensor | None,
        scalings: tuple[float, ...],
        *adapters: torch.Tensor,
    ) -> torch.Tensor:
        dtype = x.dtype
        source = None if isinstance(weight, torch.Tensor) else weight
        dense = weight if source is None else source()
        count = len(scalings)
        flat = x.reshape(-1, x.shape[-1])
        a_ = [a.to(dtype) for a in adapters[:count]]
        b_ = [b.to(dtype) for b in adapters[count:]]
        stacked_a = a_[0] if count == 1 else torch.cat(a_)
        scaled = flat @ stacked_a.t()
        base = flat @ dense.t() if bias is None else torch.addmm(bias.to(dtype), flat, dense.t())
        for rows, columns, b, scaling in _blocks(b_, scalings):
            # Into the base product, a fresh tensor: no second output.
            base[:, columns].addmm_(scaled[:, rows].mul_(scaling), b.t())
        ctx.save_for_backward(flat, weight if source is None else None, stacked_a, scaled, *b_)
        ctx.source, ctx.scalings, ctx.dtypes = source, scalings, [t.dtype for t in adapters]
        return base.view(*x.shape[:-1], dense.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        flat, weight, stacked_a, scaled, *b_ = ctx.saved_tensors
        count = len(b_)
        grad_flat = grad.reshape(-1, grad.shape[-1])
        grad_scaled, grad_b = [], []
        for i, (rows, columns, b, scaling) in enumerate(_blocks(b_, ctx.scalings)):
            grad_out = grad_flat[:, columns]
            grad_scaled.append((grad_out @ b).mul_(scaling))  # d loss / d (x @ a.T), through the scaling
            # (scaled.T @ grad).T: the same sums as grad.T @ scaled, ~40% faster on CPU.
            grad_b.append((scaled[:, rows].t() @ grad_out).t() if ctx.needs_input_grad[4 + count + i] else None)
        stacked = grad_scaled[0] if count == 1 else torch.cat(grad_scaled, dim=1)
        grad_a: list[Any] = [None] * count
        if any(ctx.needs_input_grad[4 : 4 + count]):
            grad_a = list((stacked.t() @ flat).split([b.shape[1] for b in b_]))  # each adapter's rank
        grad_x = None
        if ctx.needs_input_grad[0]:
            dense = weight if ctx.source is None else ctx.source()
            grad_x = (grad_flat @ dense).addmm_(stacked, stacked_a).view(*grad.shape[:-1], flat.shape[-1])
        grads = [None if g is None else g.to(dtype) for g, dtype in zip([*grad_a, *grad_b], ctx.dtypes)]
        return (grad_x, None, None, None, *grads)


def _blocks(b: list[torch.Tensor], scalings: tuple[float, ...]) -> list[tuple[slice, slice, torch.Tensor, float]]:
    """Per adapter: its columns of the stacked ``x @ a.T``, its columns of the output, its ``b`` and scaling.

    Each ``b`` is ``(out_features, rank)``, so it alone gives both widths.
    """
    blocks, rank_start, out_start = [], 0, 0
    for b_i, scaling in zip(b, scalings):
        out_features, rank = b_i.shape
        blocks.append((slice(rank_start, rank_start + rank), slice(out_start, out_start + out_features), b_i, scaling))
        rank_start += rank
        out_start += out_features
    return blocks


def low_rank_linear(
    x: torch.Tensor,
    weight: torch.Tensor | WeightSource,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """A frozen linear layer plus its low-rank update ``scaling * b @ a``, computed in ``x``'s dtype.

    The caller checks that the base is frozen and in ``x``'s dtype (a :class:`WeightSource`: its
    ``dtype``); ``a`` and ``b`` (fp32 master weights) are rounded to it, as autocast would, and get
    their gradients in their own dtype.
    """
    return stacked_low_rank_linear(x, weight, bias, [(a, b, scaling)])


def stacked_low_rank_linear(
    x: torch.Tensor,
    weight: torch.Tensor | WeightSource,
    bias: torch.Tensor | None,
    adapters: list[tuple[torch.Tensor, torch.Tensor, float]],
) -> torch.Tensor:
    """Several frozen linear layers reading the same ``x``, as one: ``weight``/``bias`` are theirs stacked
    by output rows, ``adapters`` their ``(a, b, scaling)`` in the same order; the output's columns are
    the layers' outputs side by side. The caller checks what :func:`low_rank_linear` says.
    """
    a, b, scalings = zip(*adapters)
    with torch.autocast(x.device.type, enabled=False):
        return _LowRankLinear.apply(x, weight, bias, tuple(scalings), *a, *b)


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def _candidates(module: torch.nn.Module) -> types.FunctionType | None:
    """The fused forward that could stand in for ``module``'s, judged by its attributes."""
    if isinstance(getattr(module, "weight", None), torch.Tensor) and hasattr(module, "variance_epsilon"):
        if module.weight.dim() == 1 and type(module).__name__.endswith("RMSNorm"):
            return _norm_forward
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if hasattr(module, "act_fn") and all(type(p) is torch.nn.Linear for p in projections):
        # Plain linear layers only: probing a quantized layer can repack its weights for inference,
        # the trap the quantization plugins guard against during training.
        return _mlp_forward
    return None


def _same_output(module: torch.nn.Module, fused: types.FunctionType) -> bool:
    """Whether ``fused`` gives exactly the module's own output on a probe input.

    Any failure to probe (quantized layers without float parameters, a forward wanting other
    inputs) counts as "not the same": the module keeps its own forward.
    """
    floats = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    try:
        width = module.weight.shape[-1] if fused is _norm_forward else module.gate_proj.in_features
        probe = torch.randn(1, 3, width, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=floats[0].device, dtype=floats[0].dtype)
        with torch.no_grad():
            return torch.equal(type(module).forward(module, probe), fused(module, probe))
    except Exception:
        return False


def fuse_modules(model: torch.nn.Module, skip: set[str] | frozenset[str] = frozenset()) -> int:
    """Give RMSNorm and SwiGLU modules the fused forward where it matches; returns how many were patched.

    ``skip`` names what a patch took over (``rms_norm``, ``mlp``): those modules keep its forward.
    """
    verdicts: dict[type, bool] = {}
    patched = 0
    for module in model.modules():
        fused = _candidates(module)
        if fused is None or ("rms_norm" if fused is _norm_forward else "mlp") in skip:
            continue
        kind = type(module)
        if kind not in verdicts:
            verdicts[kind] = _same_output(module, fused)
        if verdicts[kind]:
            module.forward = types.MethodType(fused, module)
            patched += 1
    return patched
