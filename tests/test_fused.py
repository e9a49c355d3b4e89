"""Fused RMSNorm/SwiGLU: the same outputs and gradients as the modules' own forward, fewer saved activations."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from factory.model.fused import fuse_modules


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_matches_the_original(tiny_causal_lm, dtype):
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=dtype)
    fused = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=dtype)
    layers = plain.config.num_hidden_layers
    assert fuse_modules(fused) == 2 * layers + 1 + layers  # two norms per layer, the final norm, one MLP per layer
    ids = torch.randint(3, 200, (2, 17), generator=torch.Generator().manual_seed(1))
    outputs = []
    for model in (plain, fused):
        logits = model(input_ids=ids).logits
        logits.float().pow(2).mean().backward()
        outputs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref, ref_grads), (ours, our_grads) = outputs
    assert torch.equal(ref, ours)  # the forward is op for op the same
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=5e-2, atol=1e-3)
    for name, grad in ref_grads.items():
        assert torch.allclose(our_grads[name].float(), grad.float(), **tolerance), name


def test_fused_model_keeps_fewer_activations(tiny_causal_lm):
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.bfloat16)
    fused = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.bfloat16)
    fuse_modules(fused)
    ids = torch.randint(3, 200, (1, 256))
    weights = sum(p.numel() * p.element_size() for p in plain.parameters())
    before = _saved_bytes(lambda: plain(input_ids=ids).logits) - weights
    after = _saved_bytes(lambda: fused(input_ids=ids).logits) - weights
    assert after < 0.85 * before, (before, after)


def test_modules_computing_something_else_keep_their_forward(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    layers = model.config.num_hidden_layers
    assert fuse_modules(model) == 2 * layers + 1  # the norms only
    assert "forward" not in vars(model.model.layers[0].mlp)


def test_mlps_over_other_linear_layers_are_never_probed(tiny_causal_lm):
    """Quantized projections (Linear subclasses or other modules) may repack on an inference pass: left alone."""

    class Quantized(torch.nn.Linear):
        def forward(self, x):
            raise AssertionError("probed")

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    mlp = model.model.layers[0].mlp
    old = mlp.gate_proj
    mlp.gate_proj = Quantized(old.in_features, old.out_features, bias=False)
    fuse_modules(model)
    assert "forward" not in vars(mlp) and "forward" in vars(model.model.layers[1].mlp)


@pytest.mark.parametrize("with_bias", [False, True])
def test_stacked_low_rank_layers_equal_each_layer_on_its_own(with_bias):
    """Three layers over one input (q/k/v-like, different widths, ranks and scalings) as one stacked call."""
    from factory.model.fused import stacked_low_rank_linear

    gen = torch.Generator().manual_seed(0)
    widths, ranks, scalings = (12, 4, 4), (2, 3, 2), (2.0, 0.5, 1.0)
    x = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    weights = [torch.randn(w, 8, generator=gen) for w in widths]
    biases = [torch.randn(w, generator=gen) if with_bias else None for w in widths]
    a = [torch.randn(r, 8, generator=gen, requires_grad=True) for r in ranks]
    b = [torch.randn(w, r, generator=gen, requires_grad=True) for w, r in zip(widths, ranks)]

    out = stacked_low_rank_linear(
        x, torch.cat(weights), torch.cat(biases) if with_bias else None, list(zip(a, b, scalings))
    )
    expected = torch.cat(
        [
            torch.nn.functional.linear(x, w, bias) + s * (x @ a_i.t()) @ b_i.t()
            for w, bias, a_i, b_i, s in zip(weights, biases, a, b, scalings)
        ],
        dim=-1,
    )
    torch.testing.assert_close(out, expected)
    upstream = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, [x, *a, *b], upstream)
    expected_grads = torch.autograd.grad(expected, [x, *a, *b], upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


class _Rounded:
    """A weight kept as fp32 and rounded to bf16 on each call, counting the calls: a stand-in quantized weight."""

    dtype = torch.bfloat16

    def __init__(self, master: torch.Tensor) -> None:
        self.master, self.calls = master, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.master.to(self.dtype)


@pytest.mark.parametrize("input_grad", [True, False])
def test_a_weight_source_is_called_in_each_pass_and_never_saved(input_grad):
    """The same bits as the dense weight, one call in forward, one in backward only for ``x``'s gradient;
    both close to plain torch (fp32 over the same bf16 values)."""
    from factory.model.fused import low_rank_linear

    gen = torch.Generator().manual_seed(0)
    master = torch.randn(24, 16, generator=gen)
    x = torch.randn(3, 5, 16, generator=gen).bfloat16().requires_grad_(input_grad)
    a = torch.randn(4, 16, generator=gen, requires_grad=True)
    b = torch.randn(24, 4, generator=gen, requires_grad=True)
    bias = torch.randn(24, generator=gen).bfloat16()
    source = _Rounded(master)
    saved: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        out = low_rank_linear(x, source, bias, a, b, 0.5)
    assert source.calls == 1
    assert not any(t.shape == master.shape for t in saved)  # no dense copy lives until backward
    expected = low_rank_linear(x, master.bfloat16(), bias, a, b, 0.5)
    assert torch.equal(out, expected)

    plain = torch.nn.functional.linear(x.float(), master.bfloat16().float(), bias.float())
    plain = plain + 0.5 * (x.float() @ a.bfloat16().float().t()) @ b.bfloat16().float().t()
    torch.testing.assert_close(out.float(), plain, rtol=2e-2, atol=2e-2)

    upstream = torch.randn(out.shape, generator=gen).bfloat16()
    inputs = [x, a, b] if input_grad else [a, b]
    grads = torch.autograd.grad(out, inputs, upstream)
    assert source.calls == (2 if input_grad else 1)
    for got, want, reference in zip(
        grads, torch.autograd.grad(expected, inputs, upstream), torch.autograd.grad(plain, inputs, upstream.float())
    ):
        assert torch.equal(got, want)
        torch.testing.assert_close(got.float(), reference.float(), rtol=2e-2, atol=5e-2)
