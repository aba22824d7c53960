"""VideoMAE checkpoints load strictly and reproduce VideoMAE's forward; image ViTs inflate exactly."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from adaptformer.backbones.video import VideoVisionTransformer, sinusoid_table
from adaptformer.backbones.video_weights import (
    is_video_state_dict,
    load_videomae_checkpoint,
    video_model_from_image,
)

D, DEPTH, HEADS, HIDDEN = 32, 2, 4, 128


def videomae_state_dict(pretrain: bool, classes: int = 5, layer_scale: bool = False) -> dict:
    """Random weights under VideoMAE's real key names (modeling_finetune / modeling_pretrain)."""
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {"patch_embed.proj.weight": r(D, 3, 2, 16, 16), "patch_embed.proj.bias": r(D)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D),
            p + "attn.q_bias": r(D), p + "attn.v_bias": r(D),
            p + "attn.qkv.weight": r(3 * D, D),
            p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
            p + "norm2.weight": 1 + r(D), p + "norm2.bias": r(D),
            p + "mlp.fc1.weight": r(HIDDEN, D), p + "mlp.fc1.bias": r(HIDDEN),
            p + "mlp.fc2.weight": r(D, HIDDEN), p + "mlp.fc2.bias": r(D),
        }  # fmt: skip
        if layer_scale:
            sd |= {p + "gamma_1": r(D), p + "gamma_2": r(D)}
    if not pretrain:
        sd |= {"fc_norm.weight": 1 + r(D), "fc_norm.bias": r(D)}
        sd |= {"head.weight": r(classes, D), "head.bias": r(classes)}
        return {"model": sd, "epoch": 29}
    sd |= {"norm.weight": 1 + r(D), "norm.bias": r(D)}
    out = {f"encoder.{k}": v for k, v in sd.items()}
    out |= {"decoder.blocks.0.norm1.weight": r(16), "encoder_to_decoder.weight": r(16, D)}
    out |= {"mask_token": r(1, 1, 16), "decoder.head.weight": r(1536, 16)}
    return {"model": out}


def videomae_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """VideoMAE's fine-tuning forward written out from modeling_finetune.py (the reference)."""
    x = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 16, 16))
    x = x.flatten(2).transpose(1, 2)
    x = x + sinusoid_table(x.shape[1], D)
    b, n, _ = x.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q_bias, v_bias = sd[p + "attn.q_bias"], sd[p + "attn.v_bias"]
        bias = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, D)
        h = F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + h * sd.get(p + "gamma_1", 1.0)
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])  # fmt: skip
        x = x + h * sd.get(p + "gamma_2", 1.0)
    x = F.layer_norm(x.mean(1), (D,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def video_model(num_classes: int = 5, **kwargs) -> VideoVisionTransformer:
    return VideoVisionTransformer(
        img_size=32, patch_size=16, num_frames=4, embed_dim=D, depth=DEPTH, num_heads=HEADS,
        num_classes=num_classes, **kwargs,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("layer_scale", [False, True])
def test_finetuned_checkpoint_reproduces_videomae(layer_scale: bool) -> None:
    ckpt = videomae_state_dict(pretrain=False, layer_scale=layer_scale)
    model = video_model(init_values=0.5 if layer_scale else None)
    report = load_videomae_checkpoint(model, ckpt)
    assert report.kind == "finetune" and report.fresh == []
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), videomae_forward(ckpt["model"], x), atol=1e-5, rtol=0)
    assert torch.equal(model.blocks[1].attn.qkv.bias[D : 2 * D], torch.zeros(D))  # no k bias


def test_pretraining_checkpoint_loads_the_encoder(tmp_path) -> None:
    ckpt = videomae_state_dict(pretrain=True)
    path = tmp_path / "videomae_pretrain.pth"
    torch.save(ckpt | {"args": argparse.Namespace(model="pretrain_videomae_base")}, path)
    model = video_model(num_classes=7)
    report = load_videomae_checkpoint(model, path)
    assert report.kind == "pretrain"
    assert report.fresh == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"mask_token", "encoder_to_decoder.weight", "norm.weight"} <= set(report.discarded)
    enc = ckpt["model"]
    assert torch.equal(model.blocks[0].mlp.fc1.weight, enc["encoder.blocks.0.mlp.fc1.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.bias[:D], enc["encoder.blocks.0.attn.q_bias"])


def test_truncated_or_foreign_checkpoints_name_the_keys() -> None:
    ckpt = videomae_state_dict(pretrain=False)["model"]
    del ckpt["blocks.1.mlp.fc2.weight"], ckpt["blocks.0.attn.v_bias"]
    with pytest.raises(ValueError, match="v_bias"):
        load_videomae_checkpoint(video_model(), ckpt)
    del ckpt["blocks.0.attn.q_bias"]
    with pytest.raises(ValueError, match=r"missing .*blocks\.0\.attn\.qkv\.bias.*fc2\.weight"):
        load_videomae_checkpoint(video_model(), ckpt)
    ckpt = videomae_state_dict(pretrain=False)["model"] | {"blocks.0.attn.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected: blocks\.0\.attn\.extra"):
        load_videomae_checkpoint(video_model(), ckpt)
    with pytest.raises(ValueError, match=r"wrong shape: blocks\.0\.mlp\.fc1\.bias"):
        load_videomae_checkpoint(video_model(mlp_ratio=2.0), videomae_state_dict(pretrain=False))


def test_head_of_another_task_is_replaced_and_kinds_are_detected() -> None:
    ckpt = videomae_state_dict(pretrain=False, classes=400)
    model = video_model(num_classes=51)
    report = load_videomae_checkpoint(model, ckpt)
    assert report.fresh == ["head.bias", "head.weight"] and "head.weight" in report.discarded
    assert is_video_state_dict(ckpt["model"])
    assert not is_video_state_dict({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)})


def static_clip(frame: torch.Tensor, frames: int) -> torch.Tensor:
    return frame.unsqueeze(2).repeat(1, 1, frames, 1, 1)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_small_patch14_dinov2", {}),  # class token, LayerScale, class position in pos_embed
        ("vit_small_patch14_reg4_dinov2", {}),  # + 4 register tokens, no_embed_class
        ("vit_base_patch16_224", {"global_pool": "avg"}),  # mean pooling + fc_norm, no LayerScale
    ],
)
def test_inflated_model_equals_image_model_on_static_clips(name: str, kwargs: dict) -> None:
    image = timm.create_model(
        name, pretrained=False, img_size=56 if "14" in name else 64, depth=2, embed_dim=48,
        num_heads=4, num_classes=6, **kwargs,
    ).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in image.parameters():  # LayerScale starts at 1e-5: make every part count
            p.add_(torch.randn_like(p) * 0.05)
    video = video_model_from_image(image, num_frames=8, tubelet_size=2).eval()
    frame = torch.randn(2, 3, *image.patch_embed.img_size, dtype=torch.float64)
    with torch.no_grad():
        img_tokens = image.forward_features(frame)
        vid_tokens = video.forward_features(static_clip(frame, 8))
        pooled = image.forward_head(img_tokens, pre_logits=True)
        diff = (pooled - video.forward_head(vid_tokens, pre_logits=True)).abs().max()
        assert diff < 1e-5
        logits_diff = (image(frame) - video(static_clip(frame, 8))).abs().max()
        assert logits_diff < 1e-5
        n = image.patch_embed.num_patches  # first time slot's patch tokens = image patch tokens
        p = video.num_prefix_tokens
        patch_diff = (img_tokens[:, image.num_prefix_tokens :] - vid_tokens[:, p : p + n]).abs()
        assert patch_diff.max() < 1e-5


def test_inflated_model_sees_frame_order_only_through_time_embed() -> None:
    image = timm.create_model(
        "vit_small_patch14_dinov2", img_size=28, depth=1, embed_dim=24, num_heads=2, init_values=1.0
    ).eval()
    video = video_model_from_image(image, num_frames=4, tubelet_size=1, num_classes=3).eval()
    clip = torch.randn(1, 3, 4, 28, 28)
    with torch.no_grad():
        forward, backward = video(clip), video(clip.flip(2))
        torch.testing.assert_close(forward, backward)  # positions repeat over time
        video.time_embed.normal_()
        assert (video(clip) - video(clip.flip(2))).abs().max() > 1e-3


def test_shared_dinov2_inflates_exactly(shared_backbone, videos_dir) -> None:
    """The real ViT-S/14 at 112 px: static clips of a real frame give the image features."""
    import av

    sd = {k: v.float() for k, v in load_file(shared_backbone).items()}
    image_518 = timm.create_model("vit_small_patch14_dinov2", num_classes=0)
    image_518.load_state_dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], new_size=[8, 8], num_prefix_tokens=1, antialias=False
    )
    image = timm.create_model("vit_small_patch14_dinov2", img_size=112, num_classes=0)
    image.load_state_dict(sd)
    video = video_model_from_image(image_518, num_frames=4, img_size=112)
    with av.open(str(videos_dir / "demo.mp4")) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(112, 112), mode="bilinear", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(3, 1, 1)
    with torch.no_grad():
        fp32 = (image(x) - video(static_clip(x, 4))).abs().max()
        image, video = image.double().eval(), video.double().eval()
        fp64 = (image(x.double()) - video(static_clip(x.double(), 4))).abs().max()
    assert fp64 < 1e-5  # exact up to rounding (about 1e-14)
    assert fp32 < 1e-4  # float32 rounding on features up to ~8 in magnitude (about 7e-6)
