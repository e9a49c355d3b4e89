"""A causal-LM loss that never materialises full-vocabulary fp32 logits for every position.

The default path computes ``lm_head`` over every position of the batch (prompt, padding and all)
and upcasts the whole ``tokens x vocab`` matrix to fp32: for SmolLM2 at batch 4 x 512 that is
~400 MB and a third of the step's matrix work spent on positions that carry no label. Here the
head runs only on positions that have a label, a chunk at a time, and each chunk's gradient is
computed right away in the forward pass (softmax minus one-hot, times the head), so nothing
vocabulary-sized outlives its chunk and the backward pass only scales the stored gradient: no
second head matmul to recompute logits, no logits kept for backward. This is the fused linear
cross-entropy of Liger-Kernel and Apple's cut-cross-entropy; both are GPU kernels (Triton), and no
maintained library offers it for an arbitrary transformers model on CPU, hence our own.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_TOKENS = 256
# fp32 values per block of the softmax passes: 1 MB, a few rows of a large vocabulary, stays in L2
# (measured: 1% faster steps than 4 MB blocks, no different from 256 KB).
SOFTMAX_BLOCK_VALUES = 2**18


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (as ``F.linear`` would use), else the weight's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class LogitsWorkspace:
    """The head's vocabulary-sized scratch matrices, kept from call to call.

    A fresh buffer per chunk (25 MB on SmolLM2, 78 MB on Qwen2.5's vocabulary) comes from new pages
    each time, and faulting them in cost as much as the chunk's head matmul (measured: 35 ms of 37,
    ~3% of a LoRA step). When the head trains (full fine-tuning), its weight in the compute dtype and
    each chunk's weight-gradient product are as large as the head itself (56 MB each on SmolLM2)
    and are kept here too. Nothing in it outlives a call: the loss keeps only its gradients.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def _kept(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        kept = self._buffers.get(name)
        if kept is None or kept.dtype != dtype or kept.device != device or kept.numel() < numel:
            kept = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return kept[:numel]

    def take(self, rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``rows x columns`` matrix to overwrite, grown (never shrunk) as calls need."""
        return self._kept("logits", rows * columns, dtype, device).view(rows, columns)

    def cast(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``weight`` in ``dtype``: itself when it already is, else a copy into a kept buffer (valid until the next call)."""
        if weight.dtype == dtype:
            return weight.detach()
        return self._kept("weight", weight.numel(), dtype, weight.device).view(weight.shape).copy_(weight.detach())

    def add_weight_grad(self, grad_weight: torch.Tensor, grad_logits: torch.Tensor, h: torch.Tensor) -> None:
        """``grad_weight += grad_logits.T @ h``, the product in the compute dtype (as autograd's would be), added in fp32."""
        product = self._kept("weight_grad", grad_weight.numel(), h.dtype, h.device).view(grad_weight.shape)
        grad_weight.add_(torch.mm(grad_logits.t(), h, out=product))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, gradients computed in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
        workspace: LogitsWorkspace,
    ) -> torch.Tensor:
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden, weight)
        w = workspace.cast(weight, dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        buffer = workspace.take(min(chunk_tokens, targets.numel()), w.shape[0], dtype, hidden.device)
        for start in range(0, targets.numel(), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            h, t = hidden[part].to(dtype), targets[part]
            logits = buffer[: t.numel()]
            if b is None:
                torch.mm(h, w.t(), out=logits)
            else:
                torch.addmm(b, h, w.t(), out=logits)
            # The softmax passes run a few rows at a time so their fp32 copy stays in cache: over a whole
            # 256 x 49152 chunk they were memory-bound and took as long as the head matmul itself.
            rows = max(1, SOFTMAX_BLOCK_VALUES // logits.shape[1])
            positions = torch.arange(rows, device=t.device)
            for first in range(0, t.numel(), rows):
                block, t_block = logits[first : first + rows], t[first : first + rows]
                log_probs = torch.log_softmax(block, dim=-1, dtype=torch.float32)
                total -= log_probs.gather(1, t_block[:, None]).sum()
                if want_hidden or want_weight or want_bias:
                    grad = log_probs.exp_()  # softmax, in place
                    grad[positions[: t_block.numel()], t_block] -= 1
                    if want_bias:
                        grad_bias += grad.sum(0)
                    block.copy_(grad)  # the logits' buffer now holds the gradient, in the compute dtype
            if want_hidden:
                grad_hidden[part] = logits @ w
            if want_weight:
                workspace.add_weight_grad(grad_weight, logits, h)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.scaled = False
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:
        if ctx.scaled:
            raise RuntimeError("the chunked loss can be backpropagated once: retain_graph=True is not supported")
        ctx.scaled = True
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        # The saved gradients are this node's own: scaled in place, so no second head-sized fp32
        # matrix is allocated (hence once only).
        return (
            None if grad_hidden is None else grad_hidden.mul_(grad_total.to(grad_hidden.dtype)),
            None if grad_weight is None else grad_weight.mul_(grad_total).to(weight_dtype),
            None if grad_bias is None else grad_bias.mul_(grad_total).to(bias_dtype),
            None,
            None,
            None,
        )


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    workspace: LogitsWorkspace | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of ``head(hidden)`` against ``labels`` (-100 = ignored), like transformers'.

    Normalised as transformers does: by ``num_items_in_batch`` when given (gradient accumulation),
    else by the number of labelled positions. A training loop should pass one
    :class:`LogitsWorkspace` to every call, so the logits buffer is allocated once.
    """
    targets = labels[:, 1:]
    keep = targets != -100
    total = _LinearCrossEntropy.apply(
        hidden[:, :-1][keep], head.weight, head.bias, targets[keep], chunk_tokens, workspace or LogitsWorkspace()
    )
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total / denominator


def split_head(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """(decoder, lm_head) of a plain causal LM whose logits are just ``lm_head(hidden)``; None otherwise.

    Models that scale or soft-cap their logits, or whose head is not a linear layer, keep the
    library's own loss.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        return None
    decoder = get_decoder()
    if decoder is None or decoder is base:
        return None
    return decoder, head


class _LinearTokenLogProbs(torch.autograd.Function):
    """Log-probabilities of ``targets`` under ``softmax(hidden @ weight.T + bias)``, one fp32 value per row.

    When only ``hidden`` needs a gradient (a frozen head: LoRA, freeze), ``d logp / d hidden`` is
    computed chunk by chunk in the forward pass (it does not depend on the upstream gradient, which
    only scales it per row), so the backward pass is one multiply. When the head trains too, the
    backward pass recomputes each chunk's logits instead (its gradient needs the upstream values).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
        workspace: LogitsWorkspace,
        temperature: float,
    ) -> torch.Tensor:
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden, weight)
        w = workspace.cast(weight, dtype)
        b = bias.to(dtype) if bias is not None else None
        eager = want_hidden and not (want_weight or want_bias)  # gradients now, backward only scales them
        grad_hidden = torch.empty_like(hidden) if eager else None
        out = torch.empty(targets.numel(), dtype=torch.float32, device=hidden.device)
        buffer = workspace.take(max(1, min(chunk_tokens, targets.numel())), w.shape[0], dtype, hidden.device)
        for start in range(0, targets.numel(), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            h, t = hidden[part].to(dtype), targets[part]
            logits = _chunk_logits(buffer, h, w, b, t.numel(), temperature)
            rows = max(1, SOFTMAX_BLOCK_VALUES // logits.shape[1])
            positions = torch.arange(rows, device=t.device)
            for first in range(0, t.numel(), rows):
                block, t_block = logits[first : first + rows], t[first : first + rows]
                log_probs = torch.log_softmax(block, dim=-1, dtype=torch.float32)
                out[start + first : start + first + t_block.numel()] = log_probs.gather(1, t_block[:, None])[:, 0]
                if eager:
                    grad = log_probs.exp_().neg_()  # one-hot minus softmax, in place
                    grad[positions[: t_block.numel()], t_block] += 1
                    block.copy_(grad if temperature == 1.0 else grad.div_(temperature))
            if eager:
                grad_hidden[part] = logits @ w
        if eager:
            ctx.save_for_backward(grad_hidden)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.eager, ctx.chunk_tokens, ctx.workspace, ctx.dtype, ctx.temperature = (
            eager,
            chunk_tokens,
            workspace,
            dtype,
            temperature,
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        if ctx.eager:
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_out[:, None].to(grad_hidden.dtype), None, None, None, None, None, None
        hidden, weight, bias, targets = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        dtype = ctx.dtype
        w = ctx.workspace.cast(weight, dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        buffer = ctx.workspace.take(max(1, min(ctx.chunk_tokens, targets.numel())), w.shape[0], dtype, hidden.device)
        for start in range(0, targets.numel(), ctx.chunk_tokens):
            part = slice(start, start + ctx.chunk_tokens)
            h, t, g = hidden[part].to(dtype), targets[part], grad_out[part].float() / ctx.temperature
            logits = _chunk_logits(buffer, h, w, b, t.numel(), ctx.temperature)
            rows = max(1, SOFTMAX_BLOCK_VALUES // logits.shape[1])
            positions = torch.arange(rows, device=t.device)
            for first in range(0, t.numel(), rows):
                block, t_block = logits[first : first + rows], t[first : first + rows]
                grad = torch.softmax(block, dim=-1, dtype=torch.float32).neg_()
                grad[positions[: t_block.numel()], t_block] += 1
                grad *= g[first : first + rows, None]
                if want_bias:
                    grad_bias += grad.sum(0)
                block.copy_(grad)
            if want_hidden:
                grad_hidden[part] = logits @ w
            if want_weight:
                ctx.workspace.add_weight_grad(grad_weight, logits, h)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def _chunk_logits(
    buffer: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, rows: int, temperature: float = 1.0
) -> torch.Tensor:
    logits = buffer[:rows]
    if b is None:
        torch.mm(h, w.t(), out=logits)
    else:
        torch.addmm(b, h, w.t(), out=logits)
    return logits if temperature == 1.0 else logits.div_(temperature)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    chunk_tokens: int = CHUNK_TOKENS,
    workspace: LogitsWorkspace | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``log softmax(head(hidden) / temperature)[target]`` for each row of ``hidden`` (``(N, hidden)`` -> ``(N,)`` fp32), differentiable.

    What preference losses read (sequence log-probabilities are sums of these), computed a chunk of
    rows at a time like :func:`chunked_causal_lm_loss`: no ``N x vocab`` logits are ever held, in
    any dtype. Rows are the positions that predict a target (shift and mask before calling).
    """
    if targets.numel() == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * hidden.sum()
    return _LinearTokenLogProbs.apply(
        hidden, head.weight, head.bias, targets, chunk_tokens, workspace or LogitsWorkspace(), float(temperature)
    )
