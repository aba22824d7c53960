"""Adapter-only files: bit-identical round trip, any name, loud failure on the wrong backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import adaptformer as af

from .helpers import randomize_, tiny_vit

X = torch.randn(2, 3, 32, 32)


def _trained(method="adaptformer", **cfg):
    torch.manual_seed(0)
    model = tiny_vit(layer_scale=True)
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    af.inject(
        model, af.AdapterConfig(method=method, bottleneck=4, **cfg), name="cifar", num_classes=5
    )
    for n, p in model.named_parameters():
        if any(s in n for s in ("adaptmlp", "prompts", "lora_", "head.")):
            randomize_(torch.nn.ParameterList([p]))
    model.eval()
    return model, backbone


def _fresh(backbone, **kwargs):
    model = tiny_vit(layer_scale=True, **kwargs)
    model.load_state_dict(backbone)
    return model


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("adaptformer", {}),
        ("adaptformer", {"scale": "learnable", "layernorm": "in", "layers": [1, 3]}),
        ("vpt", {"prompt_tokens": 2}),
        ("lora", {}),
        ("linear", {"head_batchnorm": True}),
        ("bitfit", {}),
    ],
)
def test_round_trip_is_bit_identical_under_another_name(tmp_path, method, cfg):
    model, backbone = _trained(method, **cfg)
    if method == "bitfit":  # bitfit changes backbone biases: they must travel in the file
        with torch.no_grad():
            model.blocks[0].attn.qkv.bias.add_(0.5)
    expected = model(X)
    af.save_adapter(model, tmp_path / "a", metadata={"classes": list("abcde")})
    fresh = _fresh(backbone)
    af.load_adapter(fresh, tmp_path / "a", name="anything")
    fresh.eval()
    assert torch.equal(fresh(X), expected)
    info = af.read_adapter_config(tmp_path / "a")
    assert info["metadata"]["classes"] == list("abcde") and info["num_classes"] == 5
    assert not any(".cifar." in k for k in load_file(tmp_path / "a" / "adapter_model.safetensors"))


def test_file_holds_only_adapter_and_head(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        f"blocks.{i}.adaptmlp.{p}"
        for i in range(4)
        for p in ("down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias")
    } | {"head.weight", "head.bias"}
    assert json.loads((tmp_path / "adapter_config.json").read_text())["config"]["bottleneck"] == 4


def test_wrong_width_lists_shapes_and_leaves_model_untouched(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    other = tiny_vit(layer_scale=True, embed_dim=64)
    before = other(X)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch: blocks\.0\.adaptmlp\.down_proj\.weight \(file \(4, 48\) vs model \(4, 64\)\)",
    ):
        af.load_adapter(other, tmp_path)
    assert not hasattr(other, "adaptformer") and torch.equal(other(X), before)


def test_wrong_depth_lists_keys(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    other = tiny_vit(layer_scale=True, depth=2)
    with pytest.raises(
        ValueError, match="block 2, but the backbone has 2 blocks|not in model: blocks.2"
    ):
        af.load_adapter(other, tmp_path)


def test_loading_into_a_model_with_other_tasks_keeps_them(tmp_path):
    model, backbone = _trained()
    af.save_adapter(model, tmp_path)
    fresh = _fresh(backbone)
    af.inject(fresh, af.AdapterConfig(bottleneck=4), name="other", num_classes=3)
    af.load_adapter(fresh, tmp_path, name="cifar")
    assert sorted(fresh.adaptformer.configs) == ["cifar", "other"]
    af.set_adapter(fresh, "other")
    assert fresh(X).shape == (2, 3)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        af.load_adapter(tiny_vit(), tmp_path / "nope")


def test_adapter_file_is_about_one_percent_for_vit_b(tmp_path):
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    af.inject(model, af.AdapterConfig(bottleneck=64))
    af.save_adapter(model, tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    full = sum(p.numel() * 4 for p in model.parameters())
    assert size < 0.02 * full
