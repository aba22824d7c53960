"""Backbone loading: strict, loud, and converting MAE / Hugging Face layouts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

import adaptformer as af

from ..helpers import TINY_HF_VIT, tiny_vit


def test_shared_backbone_loads_strictly_at_224(shared_backbone):
    model = af.create_backbone(
        "vit_small_patch14_dinov2", checkpoint=shared_backbone, img_size=224, num_classes=10
    )
    sd = load_file(shared_backbone)
    expected = resample_abs_pos_embed(
        sd["pos_embed"].float(), new_size=[16, 16], num_prefix_tokens=1, antialias=False
    )
    torch.testing.assert_close(model.pos_embed.data, expected.half().float())
    assert torch.equal(model.blocks[5].attn.qkv.weight.data, sd["blocks.5.attn.qkv.weight"].float())


def test_truncated_checkpoint_names_the_missing_keys(shared_backbone, tmp_path):
    sd = load_file(shared_backbone)
    del sd["blocks.11.mlp.fc2.weight"], sd["blocks.3.ls1.gamma"]
    path = tmp_path / "truncated.safetensors"
    save_file(sd, path)
    with pytest.raises(
        ValueError,
        match=r"missing .*blocks\.11\.mlp\.fc2\.weight.*blocks\.3\.ls1\.gamma|missing .*blocks\.3\.ls1\.gamma.*blocks\.11\.mlp\.fc2\.weight",
    ):
        af.create_backbone("vit_small_patch14_dinov2", checkpoint=path, img_size=224)


def test_wrong_architecture_is_rejected(shared_backbone):
    with pytest.raises(ValueError, match="wrong shape|cannot be resampled|unexpected"):
        af.create_backbone("vit_tiny_patch16_224", checkpoint=shared_backbone)


def test_mae_pth_with_decoder_and_model_key(tmp_path):
    src = tiny_vit(num_classes=0)
    sd = dict(src.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 32)
    sd["decoder_embed.weight"] = torch.zeros(32, 48)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd, "epoch": 799}, path)
    model = tiny_vit(num_classes=10)
    af.load_backbone_weights(model, af.read_state_dict(path))
    assert torch.equal(model.blocks[2].mlp.fc1.weight, src.blocks[2].mlp.fc1.weight)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown type '.ckpt'"):
        af.read_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        af.read_state_dict("/nonexistent/weights.safetensors")


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_hugging_face_conversion_matches_transformers(kind):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    common = TINY_HF_VIT
    if kind == "vit":
        hf = transformers.ViTModel(transformers.ViTConfig(**common), add_pooling_layer=False)
    else:
        hf = transformers.Dinov2Model(transformers.Dinov2Config(**common, layerscale_value=0.3))
    hf.eval()
    with torch.no_grad():  # layer-scale must not be uniform for the test to mean anything
        for n, p in hf.named_parameters():
            if "lambda1" in n:
                p.uniform_(0.1, 1.0)
    model = tiny_vit(depth=2, num_classes=0, layer_scale=kind == "dinov2")
    af.load_backbone_weights(model, {f"{kind}.{k}": v for k, v in hf.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        got = model.forward_features(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _classic_names(sd: dict) -> dict:
    """transformers v5 ViT key names -> the classic names found in released HF checkpoint files."""
    import re

    qkv = {"q": "query", "k": "key", "v": "value"}
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^vit\.layers\.", "vit.encoder.layer.", k)
        k = re.sub(
            r"attention\.([qkv])_proj", lambda m: f"attention.attention.{qkv[m.group(1)]}", k
        )
        k = k.replace("attention.o_proj", "attention.output.dense")
        k = k.replace(".mlp.fc1.", ".intermediate.dense.").replace(".mlp.fc2.", ".output.dense.")
        out[k] = v
    return out


def test_classic_hugging_face_names_convert_too():
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    hf = transformers.ViTModel(
        transformers.ViTConfig(**TINY_HF_VIT), add_pooling_layer=False
    ).eval()
    classic = _classic_names({f"vit.{k}": v for k, v in hf.state_dict().items()})
    assert "vit.encoder.layer.1.attention.attention.query.weight" in classic
    assert "vit.encoder.layer.1.intermediate.dense.weight" in classic
    model = tiny_vit(depth=2, num_classes=0)
    af.load_backbone_weights(model, classic)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), hf(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-5
        )


def test_an_image_size_between_patches_is_refused_with_the_two_nearest():
    from adaptformer.backbones.create import create_backbone

    with pytest.raises(ValueError, match=r"--img-size 100 is not a multiple .* 14-pixel .*"
                                         r"run at 98 px\): use 98 or 112"):  # fmt: skip
        create_backbone("vit_small_patch14_dinov2", img_size=100)


def test_a_model_name_typo_gets_close_matches():
    from adaptformer.backbones.create import backbone_source

    with pytest.raises(ValueError, match=r"unknown model 'vit_smal_patch14_dinov2.imgfocus'; "
                                         r"did you mean vit_small_patch14_dinov2.imgfocus"):  # fmt: skip
        backbone_source("vit_smal_patch14_dinov2.imgfocus", None)
