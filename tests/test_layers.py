"""adaptformer.layers: AdaptMLP's fused ``add_to`` equals ``out + adapter(x)``."""

from __future__ import annotations

import pytest
import torch

from adaptformer import AdapterConfig
from adaptformer.layers import AdaptMLP


def make(seed: int = 0, **kwargs) -> AdaptMLP:
    torch.manual_seed(seed)
    mlp = AdaptMLP(48, AdapterConfig(bottleneck=8, dropout=0.0, **kwargs))
    with torch.no_grad():  # a trained adapter: up is no longer zero
        mlp.up_proj.weight.normal_(std=0.2)
        mlp.up_proj.bias.normal_(std=0.2)
    return mlp


def test_fused_add_matches_the_plain_sum_and_its_gradients():
    fused, plain = make(), make()
    x, out = torch.randn(3, 5, 48), torch.randn(3, 5, 48)
    xf, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = fused.add_to(out, xf)
    b = out + plain(xp)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    (a * b.detach().sin()).sum().backward()
    (b * b.detach().sin()).sum().backward()
    torch.testing.assert_close(xf.grad, xp.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "kwargs", [{"scale": "learnable"}, {"layernorm": "out"}, {"layernorm": "in"}, {"scale": 1.0}]
)
def test_every_variant_gives_the_plain_sum(kwargs):
    mlp = make(**kwargs)
    x, out = torch.randn(2, 4, 48), torch.randn(2, 4, 48)
    torch.testing.assert_close(mlp.add_to(out, x), out + mlp(x), rtol=1e-6, atol=1e-6)


def test_autocast_keeps_the_residual_stream_in_float32():
    mlp = make()
    x, out = torch.randn(2, 4, 48), torch.randn(2, 4, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mlp.add_to(out, x)
    assert y.dtype == torch.float32  # a fused addmm would have made it bfloat16
