"""The built-in AdamW: torch's fused kernel by default where it runs, the same updates as the unfused one."""

from __future__ import annotations

import torch

from factory.config import load_config
from factory.train.optim import AdamW, default_param_groups


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))


def _train(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[torch.Tensor]:
    torch.manual_seed(1)
    for _ in range(5):
        model(torch.randn(6, 16)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_default_adamw_is_fused_on_cpu_and_matches_torch_unfused():
    cfg = load_config(None, ["learning_rate=1e-2", "weight_decay=0.1"])
    model = _model()
    optimizer = AdamW().create(model, cfg, default_param_groups(model, cfg))
    assert optimizer.defaults["fused"] is True

    reference_model = _model()
    groups = default_param_groups(reference_model, cfg)
    reference = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    for got, want in zip(_train(optimizer, model), _train(reference, reference_model)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fused_can_be_switched_off_and_is_skipped_for_meta_tensors():
    cfg = load_config(None, ["adamw.fused=false"])
    model = _model()
    assert not AdamW().create(model, cfg, default_param_groups(model, cfg)).defaults["fused"]

    meta = torch.nn.Linear(4, 4, device="meta")
    cfg = load_config(None, [])
    assert not AdamW().create(meta, cfg, default_param_groups(meta, cfg)).defaults["fused"]
