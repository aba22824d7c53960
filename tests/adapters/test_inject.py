"""The adapted forward pass: zero-init invariance, parity with the REFERENCE formula, task API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

import adaptformer as af
from adaptformer.adapters.inject import AdaptedBlock, adapter_state

from ..helpers import randomize_, tiny_vit

X = torch.randn(3, 3, 32, 32)


@pytest.mark.parametrize("method", ["adaptformer", "vpt", "lora", "linear"])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_zero_init_leaves_outputs_unchanged(method, layer_scale):
    model = tiny_vit(layer_scale=layer_scale)
    before = model(X)
    af.inject(model, af.AdapterConfig(method=method, bottleneck=8))
    if method == "vpt":  # prompts are not zero-initialised; disabling them must restore outputs
        with af.disable_adapters(model):
            after = model(X)
    else:
        after = model(X)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def _reference_forward(model, adapters: dict[int, dict], position: str, scale: float):
    """REFERENCE.md's formula written out by hand, reusing only the frozen sub-layers."""
    x = model._pos_embed(model.patch_embed(X))
    for i, blk in enumerate(model.blocks):
        g1 = blk.ls1.gamma if hasattr(blk.ls1, "gamma") else 1.0
        g2 = blk.ls2.gamma if hasattr(blk.ls2, "gamma") else 1.0
        x = x + g1 * blk.attn(blk.norm1(x))
        mlp = g2 * blk.mlp(blk.norm2(x))
        if i not in adapters:
            x = x + mlp
            continue
        w = adapters[i]
        src = x if position == "parallel" else mlp
        a = scale * (F.relu(src @ w["down_w"].T + w["down_b"]) @ w["up_w"].T + w["up_b"])
        x = x + mlp + a
    x = model.norm(x)
    return model.head(x[:, 0])


@pytest.mark.parametrize("position", ["parallel", "sequential"])
@pytest.mark.parametrize("layer_scale", [False, True])
@pytest.mark.parametrize("layers", [None, [0, 2]])
def test_parity_with_reference_formula(position, layer_scale, layers):
    model = tiny_vit(layer_scale=layer_scale)
    cfg = af.AdapterConfig(bottleneck=8, scale=0.1, position=position, layers=layers)
    af.inject(model, cfg)
    adapters = {}
    for i, blk in enumerate(model.blocks):
        if "default" in blk.adaptmlp:
            m = blk.adaptmlp["default"]
            randomize_(m)
            adapters[i] = {
                "down_w": m.down_proj.weight,
                "down_b": m.down_proj.bias,
                "up_w": m.up_proj.weight,
                "up_b": m.up_proj.bias,
            }
    assert sorted(adapters) == (layers or [0, 1, 2, 3])
    model.eval()
    with torch.no_grad():
        expected = _reference_forward(model, adapters, position, 0.1)
        got = model(X)
    assert (
        got - model.head(model.norm(model._pos_embed(model.patch_embed(X)))[:, 0])
    ).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_adapter_sits_outside_drop_path():
    """With drop-path active in training mode the adapter output must still always be added."""
    model = tiny_vit(drop_path_rate=0.9)
    af.inject(model, af.AdapterConfig(bottleneck=4, dropout=0.0))
    blk = model.blocks[0]
    randomize_(blk.adaptmlp["default"])
    blk.train()
    x = torch.randn(2, 17, 48)
    torch.manual_seed(1)
    with_adapter = blk(x)
    torch.manual_seed(1)
    with af.disable_adapters(model):
        without = blk(x)
    torch.manual_seed(1)
    x_attn = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
    torch.testing.assert_close(with_adapter - without, blk.adaptmlp["default"](x_attn))


def test_parameter_names_follow_the_convention():
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4))
    names = [n for n, _ in model.named_parameters() if "adaptmlp" in n]
    assert len(names) == 16
    assert all(n.startswith("blocks.") for n in names)
    ends = ("down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias")
    assert all(n.endswith(ends) for n in names)
    # backbone keys are untouched, so pretrained checkpoints keep loading
    assert "blocks.0.attn.qkv.weight" in model.state_dict()


def test_timm_api_keeps_working():
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4))
    feats = model.forward_features(X)
    assert feats.shape == (3, 17, 48)
    assert model.forward_head(feats, pre_logits=True).shape == (3, 48)
    model.set_grad_checkpointing(True)
    model.train()
    model(X).sum().backward()
    model.reset_classifier(3)
    assert model(X).shape == (3, 3)


def test_vit_large_width_works():
    """The reference hard-codes d=768; any width must work (ViT-L is 1024 wide)."""
    model = tiny_vit(embed_dim=64 * 16 // 16 * 16, depth=2)  # 1024 wide, 2 blocks: cheap
    af.inject(model, af.AdapterConfig(bottleneck=8))
    assert model.blocks[0].adaptmlp["default"].down_proj.in_features == 1024
    assert model(X).shape == (3, 7)


def test_unsupported_block_raises_type_error():
    from timm.models.vision_transformer import ResPostBlock

    model = tiny_vit(block_fn=ResPostBlock)
    with pytest.raises(TypeError, match="ResPostBlock"):
        af.inject(model)
    with pytest.raises(TypeError, match="Linear has no transformer blocks"):
        af.inject(torch.nn.Linear(2, 2))


def test_many_tasks_switch_adapters_and_heads():
    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4), name="a", num_classes=5)
    randomize_(model.blocks[0].adaptmlp["a"])
    out_a = model(X)
    af.inject(model, af.AdapterConfig(bottleneck=8), name="b", num_classes=3)
    assert model(X).shape == (3, 3)
    af.set_adapter(model, "a")
    assert model.num_classes == 5
    torch.testing.assert_close(model(X), out_a, atol=0, rtol=0)
    with af.disable_adapters(model):
        plain = model(X)
    assert not torch.allclose(plain, out_a)
    assert model.blocks[0].adapters_enabled  # restored on exit
    af.delete_adapter(model, "a")
    assert af.get_head(model, "b").out_features == 3 and model(X).shape == (3, 3)
    assert "a" not in model.blocks[0].adaptmlp
    with pytest.raises(KeyError, match="no adapter named 'a'"):
        af.set_adapter(model, "a")
    with pytest.raises(ValueError, match="exists already"):
        af.inject(model, name="b")


def test_vpt_deep_and_shallow_token_counts():
    model = tiny_vit(num_classes=0)
    af.inject(model, af.AdapterConfig(method="vpt", prompt_tokens=5), name="deep")
    assert model.forward_features(X).shape == (3, 17, 48)  # prompts dropped after each block
    af.inject(
        model, af.AdapterConfig(method="vpt", prompt_tokens=3, prompt_mode="shallow"), name="sh"
    )
    assert model.forward_features(X).shape == (3, 17, 48)  # dropped after the last block
    assert "sh" in model.blocks[0].prompts and "sh" not in model.blocks[1].prompts
    assert all("deep" in b.prompts for b in model.blocks)


def test_inject_checks_layers_against_depth():
    with pytest.raises(ValueError, match="has 4 blocks"):
        af.inject(tiny_vit(), af.AdapterConfig(layers=[4]))


def test_blocks_keep_their_class_and_keys_and_go_back_on_failure():
    """A block is switched to an adapted subclass of its own class in place: same object, same
    backbone keys, timm's helpers still see a ``Block``; the forward is the adapted one."""
    model = tiny_vit()
    before = list(model.blocks)
    keys = set(model.state_dict())
    af.inject(model)
    assert all(isinstance(b, AdaptedBlock) and isinstance(b, Block) for b in model.blocks)
    assert [id(b) for b in model.blocks] == [id(b) for b in before]
    assert type(model.blocks[0]).forward is AdaptedBlock.forward
    assert keys - {"head.weight", "head.bias"} <= set(model.state_dict())


# -- item 20 of issue #24: inject is all-or-nothing -------------------------------------------


def _snapshot(model):
    """Everything inject may change: module tree, tensors, bookkeeping, the head."""
    return (
        repr(model),
        {k: v.clone() for k, v in model.state_dict().items()},
        hasattr(model, "adaptformer"),
        model.head,
        [type(b) for b in model.blocks],
    )


def _same(a, b):
    assert a[0] == b[0] and a[2:] == b[2:]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


class _OddAttention(torch.nn.Module):
    """An attention without a fused qkv Linear: LoRA cannot adapt it."""

    def __init__(self, attn):
        super().__init__()
        self.inner = attn

    def forward(self, x, **kwargs):
        return self.inner(x, **kwargs)


@pytest.mark.parametrize("first", [None, "adaptformer"])
@pytest.mark.parametrize(
    "failure", ["layers", "lora_part_way", "raise_in_module"]
)
def test_a_failing_inject_leaves_the_model_exactly_as_before(monkeypatch, first, failure):
    model = tiny_vit()
    if first:
        af.inject(model, af.AdapterConfig(bottleneck=4), name="first", num_classes=3)
    if failure == "lora_part_way":
        model.blocks[2].attn = _OddAttention(model.blocks[2].attn)
    before = _snapshot(model)
    config = af.AdapterConfig(method="lora", bottleneck=2)
    if failure == "layers":
        config = af.AdapterConfig(bottleneck=4, layers=[1, 9])
    elif failure == "raise_in_module":
        from adaptformer.adapters import inject as inject_module

        made = []

        def failing(*args, **kwargs):
            made.append(1)
            if len(made) == 3:
                raise RuntimeError("out of memory")
            return real(*args, **kwargs)

        real = inject_module.AdaptMLP
        monkeypatch.setattr(inject_module, "AdaptMLP", failing)
        config = af.AdapterConfig(bottleneck=4)
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        af.inject(model, config, name="new", num_classes=5)
    _same(_snapshot(model), before)
    if first:
        assert adapter_state(model).active == "first"
        assert "new" not in adapter_state(model).configs
