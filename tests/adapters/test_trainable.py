"""Trainable parameters are decided by structure; gradients reach exactly those."""

from __future__ import annotations

import pytest
import timm
import torch

import adaptformer as af

from ..helpers import tiny_vit

X = torch.randn(4, 3, 32, 32)
Y = torch.tensor([0, 1, 2, 3])


_TASK = (".adaptmlp.", ".attn_adapter.", ".prompts.", ".lora_", "task_heads.")


def _expected(name: str, method: str) -> bool:
    head = name.startswith("head.")
    if af.method_rule(method).bottleneck_adapter:
        return head or ".adaptmlp.t." in name or ".attn_adapter.t." in name
    return {
        "vpt": head or ".prompts.t" in name,
        "lora": head or ".lora_A.t." in name or ".lora_B.t." in name,
        "linear": head,
        "full": not any(s in name for s in _TASK),
        "bitfit": head or (name.endswith("bias") and not any(s in name for s in _TASK)),
    }[method]


@pytest.mark.parametrize("method", af.METHODS)
def test_gradients_reach_exactly_the_intended_parameters(method):
    model = tiny_vit(layer_scale=True)
    # another task in the same model must stay frozen whatever this task trains
    af.inject(
        model, af.AdapterConfig(method="adaptformer", bottleneck=4), name="other", num_classes=3
    )
    af.inject(model, af.AdapterConfig(method=method, bottleneck=4), name="t", num_classes=4)
    af.mark_trainable(model, method)
    model.train()
    torch.nn.functional.cross_entropy(model(X), Y).backward()
    named = dict(model.named_parameters())
    wrong_grad = [n for n, p in named.items() if (p.grad is not None) != _expected(n, method)]
    wrong_flag = [n for n, p in named.items() if p.requires_grad != _expected(n, method)]
    assert not wrong_grad and not wrong_flag
    assert (
        any(_expected(n, method) and not n.startswith("head.") for n in named) or method == "linear"
    )


def test_frozen_weights_do_not_move_after_a_step():
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4), num_classes=4)
    af.mark_trainable(model, "adaptformer")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert model.blocks[0].adaptmlp["default"].up_proj.weight.abs().sum() > 0


def test_vit_b16_r64_adapter_parameter_count():
    """REFERENCE.md: 12 x (2*768*64 + 64 + 768) = 1,189,632 (random weights, no download)."""
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    af.inject(model, af.AdapterConfig(bottleneck=64))
    n = sum(p.numel() for p in af.adapter_parameters(model, "default").values())
    assert n == 1_189_632
    counts = af.mark_trainable(model, "adaptformer")
    assert counts.trainable == 1_189_632 + 768 * 100 + 100
    assert counts.backbone == 85_798_656  # ViT-B/16 without its head
    assert 1.4 < counts.trainable_percent < 1.5


def test_unknown_or_mismatched_method_is_a_clear_error():
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(method="linear"))
    with pytest.raises(ValueError, match="unknown method 'prompt'"):
        af.mark_trainable(model, "prompt")
    with pytest.raises(
        ValueError, match="needs adapter 'default' injected with method='adaptformer'"
    ):
        af.mark_trainable(model, "adaptformer")
