"""The adapter family against implementations nobody here wrote: adapter-plus (timm ViT) and
AdapterHub ``adapters`` (Hugging Face ViT). Same backbone, same adapter weights copied across by
name, outputs equal to 1e-5 with train mode off, trainable-parameter counts equal exactly.
AdapterHub is compared twice: on a timm ViT holding the HF weights (by conversion), and on the
HF ViT itself, adapted through ``adaptformer.backbones.hf`` (the ``hf-vit`` spec)."""

from __future__ import annotations

import functools
import types

import pytest
import torch

import adaptformer as af
from adaptformer.adapters.inject import AdaptedBlock

from ..helpers import TINY_HF_VIT, tiny_vit

X = torch.randn(2, 3, 32, 32)


def _randomize_adapters(model: torch.nn.Module) -> None:
    """Non-trivial adapter weights (the inits start at or near zero, which would prove little)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in af.adapter_parameters(model, "default").values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _ours(method: str, layer_scale: bool = False, **overrides) -> torch.nn.Module:
    model = tiny_vit(depth=2, num_classes=0, layer_scale=layer_scale)
    af.inject(model, af.AdapterConfig(method=method, bottleneck=8, **overrides))
    _randomize_adapters(model)
    return model.eval()


def _adapter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in af.adapter_parameters(model, "default").values())


# -- adapter-plus (Steitz & Roth, CVPR 2024): the package patches timm on import ----------------


@pytest.fixture(scope="module")
def adapter_plus():
    import timm.models.vision_transformer as vit

    original = vit._create_vision_transformer
    try:
        module = pytest.importorskip(
            "adapter_plus", reason="adapter-plus not installed (dev extra)"
        )
    finally:  # importing it replaces timm's ViT factory for the whole process: undo that
        vit._create_vision_transformer = original
    return module


# our preset -> adapter-plus's block ``config`` and Adapter settings for the same function
_ADAPTER_PLUS = {
    "adapter_plus": dict(config="post", scaling="channel", init="houlsby", drop_path=0.1),
    "houlsby": dict(config="houlsby", scaling=1.0, init="houlsby", drop_path=0.0),
    "pfeiffer": dict(config="pfeiffer", scaling=1.0, init="bert", drop_path=0.0),
    "adaptformer": dict(config="parallel", scaling=0.1, init="lora", drop_path=0.0),
    "adaptformer-sequential": dict(config="intermediate", scaling=0.1, init="lora", drop_path=0.0),
}


def _their_vit(adapter_plus, method: str, layer_scale: bool, act: bool):
    spec = _ADAPTER_PLUS[method]
    config = types.SimpleNamespace(
        config=spec["config"],
        dim=8,
        dropout=0.0,
        drop_path=spec["drop_path"],
        act_layer=True,
        norm_layer=False,
        bias=True,
        scaling=spec["scaling"],
        init=spec["init"],
        attn_adapter=spec["config"] == "houlsby",
    )
    # adapter-plus 0.1.0's VisionTransformerAdapter no longer builds under current timm (timm's
    # ViT passes new block arguments), so its AdapterBlock goes into a plain timm ViT instead:
    # the blocks are the part under test, the embedding and final norm are timm's own.
    model = tiny_vit(depth=2, num_classes=0, layer_scale=layer_scale)
    act_layer = torch.nn.GELU if act else torch.nn.ReLU  # adapter-plus adapters use the block's
    for i in range(len(model.blocks)):
        model.blocks[i] = adapter_plus.AdapterBlock(
            dim=48,
            num_heads=4,
            qkv_bias=True,
            init_values=0.1 if layer_scale else None,
            act_layer=act_layer,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            adapter_config=config,
        )
    return model.eval()


def _to_adapter_plus(ours: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under adapter-plus's names (``blocks.i.adapter.bottleneck.1.weight``)."""
    names = {
        "adaptmlp.default.down_proj": "adapter.bottleneck.1",
        "adaptmlp.default.up_proj": "adapter.bottleneck.4",
        "adaptmlp.default.scale": "adapter.scaling",
        "attn_adapter.default.down_proj": "adapter_attn.bottleneck.1",
        "attn_adapter.default.up_proj": "adapter_attn.bottleneck.4",
        "attn_adapter.default.scale": "adapter_attn.scaling",
    }
    out = {}
    for k, v in ours.state_dict().items():
        for a, b in names.items():
            k = k.replace(a, b)
        out[k] = v
    return out


@pytest.mark.parametrize("method", list(_ADAPTER_PLUS))
@pytest.mark.parametrize("layer_scale", [False, True])
def test_matches_adapter_plus(adapter_plus, method, layer_scale):
    preset, _, variant = method.partition("-")
    overrides = {"position": variant} if variant else {}
    ours = _ours(preset, layer_scale, **overrides)
    # adapter-plus builds every adapter with the block's activation; AdaptFormer's and
    # Pfeiffer's is ReLU, so their block gets ReLU too (the frozen MLP then uses it on both sides)
    relu = af.AdapterConfig(method=preset).activation == "relu"
    if relu:
        for blk in ours.blocks:
            blk.mlp.act = torch.nn.ReLU()
    theirs = _their_vit(adapter_plus, method, layer_scale, act=not relu)
    missing, unexpected = theirs.load_state_dict(_to_adapter_plus(ours), strict=False)
    assert not unexpected and not [k for k in missing if k.endswith("scaling")]
    assert not [k for k in missing if "adapter" in k]
    with torch.no_grad():
        torch.testing.assert_close(ours(X), theirs(X), atol=1e-5, rtol=1e-5)
        # and the adapters really act: without them the outputs differ
        with af.disable_adapters(ours):
            assert not torch.allclose(ours(X), theirs(X), atol=1e-3)
    counted = sum(p.numel() for n, p in theirs.named_parameters() if "adapter" in n)
    assert _adapter_count(ours) == counted


def test_adapter_plus_drop_path_is_per_sample_in_training(adapter_plus):
    """Adapter+'s stochastic depth drops a sample's whole adapter update, as timm's DropPath."""
    ours = _ours("adapter_plus", drop_path=0.5)
    torch.manual_seed(0)
    blk = ours.blocks[0]
    assert isinstance(blk, AdaptedBlock)
    adapter = blk.adaptmlp["default"].train()
    x = torch.randn(64, 5, 48)
    out = adapter(x)
    dropped = (out.abs().sum(dim=(1, 2)) == 0).float().mean().item()
    assert 0.3 < dropped < 0.7
    kept = out.abs().sum(dim=(1, 2)) != 0
    adapter.eval()
    torch.testing.assert_close(out[kept], adapter(x)[kept] * 2)  # scaled by 1/(1-p)


# -- AdapterHub ``adapters`` (Hugging Face ViT) -------------------------------------------------


def _hf_vit_with(adapters_lib, config):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    hf = transformers.ViTModel(transformers.ViTConfig(**TINY_HF_VIT), add_pooling_layer=False)
    adapters_lib.init(hf)
    hf.add_adapter("t", config=config)
    hf.train_adapter("t")  # freezes the backbone, activates "t"
    return hf.eval()


def _ours_from_adapterhub(hf, method: str, **overrides) -> torch.nn.Module:
    """Our model with AdapterHub's backbone (by conversion) and adapter weights (by name)."""
    sd = hf.state_dict()
    backbone = {  # AdapterHub adds its own modules (adapters, prompt-tuning hooks): skip them
        f"vit.{k}": v
        for k, v in sd.items()
        if ".adapters." not in k and not k.startswith(("prompt_tuning.", "shared_parameters."))
    }
    ours = tiny_vit(depth=2, num_classes=0)
    af.load_backbone_weights(ours, backbone)
    af.inject(ours, af.AdapterConfig(method=method, bottleneck=8, **overrides))
    where = {"output_adapters": "adaptmlp", "attention_adapters": "attn_adapter"}
    names = {"adapter_down.0": "down_proj", "adapter_up": "up_proj", "scaling": "scale"}
    ours_sd = ours.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if ".adapters.t." not in k:
                continue
            # encoder.layer.0.output.output_adapters.adapters.t.adapter_down.0.weight
            layer = k.split("encoder.layer.")[1].split(".")[0]
            slot = next(ours_name for hub, ours_name in where.items() if f".{hub}." in k)
            tail = k.split(".adapters.t.")[1]
            for a, b in names.items():
                tail = tail.replace(a, b)
            target = f"blocks.{layer}.{slot}.default.{tail}"
            ours_sd[target].copy_(v)
    return ours.eval()


@pytest.fixture(scope="module")
def adapterhub():
    return pytest.importorskip("adapters", reason="AdapterHub adapters not installed (dev extra)")


def _hub_configs(adapterhub):
    return {  # reduction factor 6 at width 48 gives r=8, our bottleneck
        "pfeiffer": adapterhub.SeqBnConfig(reduction_factor=6),
        "houlsby": adapterhub.DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu"),
        "adapter_plus": adapterhub.AdapterPlusConfig(reduction_factor=6),
    }


@pytest.mark.parametrize("method", ["pfeiffer", "houlsby", "adapter_plus"])
def test_matches_adapterhub(adapterhub, method):
    hf = _hf_vit_with(adapterhub, _hub_configs(adapterhub)[method])
    with torch.no_grad():
        # the adapter weights AdapterHub initialised are tiny; make them matter on both sides
        for p in (p for n, p in hf.named_parameters() if ".adapters.t." in n):
            p.add_(torch.randn_like(p) * 0.2)
        ours = _ours_from_adapterhub(hf, method)
        expected = hf(pixel_values=X).last_hidden_state
        torch.testing.assert_close(ours.forward_features(X), expected, atol=1e-5, rtol=1e-5)
        with af.disable_adapters(ours):  # the adapters really act on both sides
            assert not torch.allclose(ours.forward_features(X), expected, atol=1e-3)
    hub_trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    assert _adapter_count(ours) == hub_trainable


def test_adapterhub_houlsby_default_activation_is_silu(adapterhub):
    """AdapterHub's Houlsby defaults to swish; ``--activation silu`` reproduces it exactly."""
    hf = _hf_vit_with(adapterhub, adapterhub.DoubleSeqBnConfig(reduction_factor=6))
    with torch.no_grad():
        for p in (p for n, p in hf.named_parameters() if ".adapters.t." in n):
            p.add_(torch.randn_like(p) * 0.2)
        ours = _ours_from_adapterhub(hf, "houlsby", activation="silu")
        expected = hf(pixel_values=X).last_hidden_state
        torch.testing.assert_close(ours.forward_features(X), expected, atol=1e-5, rtol=1e-5)


# -- AdapterHub and ours on the same Hugging Face ViT (``backbones.hf``, no conversion) ----------


def _same_hf_vit_twice(adapters_lib, config):
    """One HF ViT: a copy wrapped for adaptformer, the original given to AdapterHub."""
    import copy

    from adaptformer.backbones.hf import HFVisionBackbone

    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    hf = transformers.ViTModel(transformers.ViTConfig(**TINY_HF_VIT), add_pooling_layer=False)
    ours = HFVisionBackbone(copy.deepcopy(hf).eval())
    adapters_lib.init(hf)
    hf.add_adapter("t", config=config)
    hf.train_adapter("t")
    return hf.eval(), ours


def _copy_from_adapterhub(hf, ours) -> None:
    """AdapterHub's adapter weights into ours, by name (``blocks.i`` is HF's ``encoder.layer.i``)."""
    where = {"output_adapters": "adaptmlp", "attention_adapters": "attn_adapter"}
    names = {"adapter_down.0": "down_proj", "adapter_up": "up_proj", "scaling": "scale"}
    params = af.adapter_parameters(ours, "default")
    copied = set()
    with torch.no_grad():
        for k, v in hf.state_dict().items():
            if ".adapters.t." not in k:
                continue
            layer = k.split("encoder.layer.")[1].split(".")[0]
            slot = next(ours_name for hub, ours_name in where.items() if f".{hub}." in k)
            tail = k.split(".adapters.t.")[1]
            for a, b in names.items():
                tail = tail.replace(a, b)
            target = f"blocks.{layer}.{slot}.default.{tail}"
            params[target].copy_(v)
            copied.add(target)
    assert copied == set(params)  # every adapter parameter of ours came from AdapterHub


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("pfeiffer", {}), ("houlsby", {}), ("adapter_plus", {}), ("houlsby", {"activation": "silu"})],
)
def test_matches_adapterhub_on_the_same_hf_vit(adapterhub, method, overrides):
    """Our spec for HF's ``ViTLayer`` against AdapterHub's own patching of the same layers."""
    configs = _hub_configs(adapterhub)
    if overrides:  # AdapterHub's Houlsby default (swish)
        configs["houlsby"] = adapterhub.DoubleSeqBnConfig(reduction_factor=6)
    hf, ours = _same_hf_vit_twice(adapterhub, configs[method])
    af.inject(ours, af.AdapterConfig(method=method, bottleneck=8, **overrides))
    ours.eval()
    with torch.no_grad():
        for p in (p for n, p in hf.named_parameters() if ".adapters.t." in n):
            p.add_(torch.randn_like(p) * 0.2)
        _copy_from_adapterhub(hf, ours)
        expected = hf(pixel_values=X).last_hidden_state
        torch.testing.assert_close(ours.forward_features(X), expected, atol=1e-5, rtol=1e-5)
        with af.disable_adapters(ours):  # the adapters really act on both sides
            assert not torch.allclose(ours.forward_features(X), expected, atol=1e-3)
    hub_trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    assert _adapter_count(ours) == hub_trainable
